"""fit_to_context: exact sub-sequences, sentence cuts, budgets, metadata, markers."""

import dataclasses
import functools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import reasoning_circuits as rc
from reasoning_circuits import ContextLengthError, Segment, Trace
from reasoning_circuits.fitting import FitInfo, fit_to_context, min_fit_length
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.reading import read_traces

R1 = Path(__file__).parent / "fixtures" / "reading_r1_rows.jsonl"
TOKENIZERS = ["single", "split", "tiny-reasoner"]
OTHER_SEGMENTS = ("bos", "prompt", "think_open", "think_close", "answer", "eos")


@functools.cache
def tokenizer(name):
    if name == "tiny-reasoner":  # the shipped model's tokenizer, loaded from its directory
        return AutoTokenizer.from_pretrained(BUILTIN_MODELS["tiny-reasoner"])
    return rc.testing.bpe_tokenizer(think_tokens=name)


@functools.cache
def r1_traces(name):
    return tuple(read_traces(R1, tokenizer(name), on_error=[].append))


def check_fit(trace, fitted, budget, keep, tok):
    """Every promise of fit_to_context, checked from the original trace alone."""
    if len(trace) <= budget:
        assert fitted is trace
        return
    assert len(fitted) <= budget
    reasoning, sentences = trace["reasoning"], trace.sentences
    info = FitInfo.of(fitted)
    assert info.truncated and info.max_tokens == budget and info.keep == keep
    first, count = info.first_kept_sentence, info.kept_sentences
    kept = sentences[first : first + count]
    # a contiguous run of whole sentences at the kept end
    assert (first + count == len(sentences)) if keep == "end" else (first == 0)
    kept_ids = tuple(i for s in kept for i in trace.ids_of(s))
    # an exact sub-sequence: prefix segments + part of the reasoning + tail, no new ids
    assert fitted.ids == trace.ids[: reasoning.start] + kept_ids + trace.ids[reasoning.stop :]
    for name in OTHER_SEGMENTS:
        assert fitted.ids_of(name) == trace.ids_of(name)
        assert fitted.text_of(name) == trace.text_of(name)
    # the sentences are the kept sentences of the original
    assert [fitted.ids_of(s) for s in fitted.sentences] == [trace.ids_of(s) for s in kept]
    assert fitted.sentence_texts == [trace.text_of(s).strip() for s in kept]
    # cut at a sentence boundary, and the largest such cut that fits
    cuts = sorted({s.start for s in sentences} | {reasoning.stop})
    kept_from = reasoning.stop - len(kept_ids) if keep == "end" else reasoning.start
    kept_to = reasoning.stop if keep == "end" else reasoning.start + len(kept_ids)
    assert kept_from in cuts and kept_to in cuts
    if keep == "end" and kept_from > reasoning.start:
        wider = max(c for c in cuts if c < kept_from)
        assert len(fitted) + (kept_from - wider) > budget
    if keep == "start" and kept_to < reasoning.stop:
        wider = min(c for c in cuts if c > kept_to)
        assert len(fitted) + (wider - kept_to) > budget
    # the numbers add up
    assert info.original_tokens == len(trace) and info.original_sentences == len(sentences)
    assert info.dropped_tokens == len(trace) - len(fitted) == len(reasoning) - len(kept_ids)
    assert info.dropped_sentences == len(sentences) - count
    assert info.marker is None and info.marker_tokens == 0
    # the library finds the same segments and sentences in the new ids
    again = Trace.from_ids(fitted.ids, tok)
    assert again.text == fitted.text
    assert dict(again.segments) == dict(fitted.segments)
    assert again.sentences == fitted.sentences


WORDS = ["so", "x", "equals", "the", "answer", "Wait", "check", "$x = 2.5$", "12.50", "then", "7"]
sentence = st.builds(
    lambda words, end: " ".join(words) + end,
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
    st.sampled_from([".", "?", "!", ":"]),
)
reasoning_text = st.lists(
    st.tuples(sentence, st.sampled_from([" ", "\n", "\n\n"])), min_size=1, max_size=8
).map(lambda pieces: "\n" + "".join(s + sep for s, sep in pieces))


@settings(max_examples=80, deadline=None)
@given(
    reasoning=reasoning_text,
    name=st.sampled_from(TOKENIZERS),
    keep=st.sampled_from(["end", "start"]),
    share=st.floats(0, 1.1),
    at_cut=st.booleans(),
    delta=st.integers(-1, 1),
)
def test_fit_properties_on_random_reasonings_and_budgets(
    reasoning, name, keep, share, at_cut, delta
):
    tok = tokenizer(name)
    trace = Trace.from_parts("Q: what is x? ", reasoning, " The answer is 7.", tok, append_eos=True)
    floor = min_fit_length(trace)
    if at_cut:  # a budget next to a sentence boundary, where off-by-one errors show
        lengths = [len(s) for s in trace.sentences]
        k = round(share * len(lengths)) % (len(lengths) + 1)
        kept = lengths[k:] if keep == "end" else lengths[:k]
        budget = max(floor, floor + sum(kept) + delta)
    else:
        budget = floor + round(share * (len(trace) - floor))
    check_fit(trace, fit_to_context(trace, budget, keep=keep), budget, keep, tok)


@settings(max_examples=40, deadline=None)
@given(
    row=st.integers(0, 3),
    name=st.sampled_from(TOKENIZERS),
    keep=st.sampled_from(["end", "start"]),
    extra=st.integers(0, 400),
)
def test_fit_properties_on_r1_style_traces(row, name, keep, extra):
    trace = r1_traces(name)[row]
    budget = min_fit_length(trace) + extra
    check_fit(trace, fit_to_context(trace, budget, keep=keep), budget, keep, tokenizer(name))


@pytest.mark.parametrize("name", TOKENIZERS)
def test_known_budgets_keep_known_sentences(name):
    trace = r1_traces(name)[1]  # 8 sentences
    sentences, floor = trace.sentences, min_fit_length(trace)
    assert len(sentences) == 8
    assert floor == len(trace) - len(trace["reasoning"])
    last, second = len(sentences[-1]), len(sentences[-2])
    for budget, kept in [
        (floor, 0),
        (floor + last - 1, 0),
        (floor + last, 1),
        (floor + last + second - 1, 1),
        (floor + last + second, 2),
    ]:
        fitted = fit_to_context(trace, budget)
        assert len(fitted.sentences) == kept, budget
        assert FitInfo.of(fitted).first_kept_sentence == 8 - kept
        assert len(fitted) == floor + sum(len(s) for s in sentences[8 - kept :])
    empty = fit_to_context(trace, floor)
    assert len(empty["reasoning"]) == 0 and empty.text_of("reasoning") == ""
    head, next_ = len(sentences[0]), len(sentences[1])
    for budget, kept in [(floor + head - 1, 0), (floor + head, 1), (floor + head + next_ - 1, 1)]:
        fitted = fit_to_context(trace, budget, keep="start")
        assert fitted.sentence_texts == trace.sentence_texts[:kept], budget


def test_refuses_when_the_fixed_parts_do_not_fit():
    tok = tokenizer("single")
    trace = r1_traces("single")[1]
    floor = min_fit_length(trace)
    with pytest.raises(ContextLengthError, match=f"has {len(trace)} tokens.*need {floor} "):
        fit_to_context(trace, floor - 1)
    blank = Trace.from_parts("Q? " * 10, "\n\n", " A.", tok)
    assert not blank.sentences and min_fit_length(blank) == len(blank)
    with pytest.raises(ContextLengthError, match="no sentence to drop"):
        fit_to_context(blank, len(blank) - 1)
    assert fit_to_context(blank, len(blank)) is blank


def test_sequences_give_lists_and_name_the_failing_trace():
    traces = r1_traces("single")
    budget = 120
    fitted = fit_to_context(traces, budget)
    assert isinstance(fitted, list) and len(fitted) == len(traces)
    assert [f.ids for f in fitted] == [fit_to_context(t, budget).ids for t in traces]
    assert fit_to_context(list(traces[:1]), 10_000) == [traces[0]]
    too_small = min(min_fit_length(t) for t in traces[:2]) + 1
    bad = next(i for i, t in enumerate(traces) if min_fit_length(t) > too_small)
    with pytest.raises(ContextLengthError, match=rf"trace {bad} \(id 'test/"):
        fit_to_context(traces, too_small)


def test_fitting_again_equals_fitting_once_and_metadata_round_trips():
    for keep in ("end", "start"):
        for trace in r1_traces("split"):
            floor = min_fit_length(trace)
            for b1, b2 in [(floor + 80, floor + 30), (floor + 30, floor + 30), (floor + 40, floor)]:
                twice = fit_to_context(fit_to_context(trace, b1, keep=keep), b2, keep=keep)
                once = fit_to_context(trace, b2, keep=keep)
                assert twice.ids == once.ids and twice.sentences == once.sentences
                if len(once) < len(trace):  # max_tokens is the budget of the last real cut
                    first_cut = fit_to_context(trace, b1, keep=keep)
                    budget = b2 if len(first_cut) > b2 else b1
                    assert FitInfo.of(twice) == dataclasses.replace(
                        FitInfo.of(once), max_tokens=budget
                    )
            fitted = fit_to_context(trace, floor + 30, keep=keep)
            again = Trace.from_dict(json.loads(json.dumps(fitted.to_dict())))
            assert FitInfo.of(again) == FitInfo.of(fitted)
            assert again.metadata["id"] == trace.metadata["id"]  # other metadata kept


def test_r2a_convention_traces_fit_too():
    tok = tokenizer("single")
    trace = read_traces(R1, tok, convention="r2a", on_error=[].append)[1]
    fitted = fit_to_context(trace, min_fit_length(trace) + 40)
    assert fitted.convention == "r2a" and len(fitted["eos"]) == 1
    assert fitted.ids_of("answer") == trace.ids_of("answer")


@pytest.mark.parametrize("name", TOKENIZERS)
def test_marker_is_a_sentence_of_its_own(name):
    tok = tokenizer(name)
    trace = r1_traces(name)[1]
    budget = min_fit_length(trace) + 90
    for keep, marker, where in [
        ("end", "[earlier reasoning omitted]\n", 0),
        ("start", "\n[later reasoning omitted]\n", -1),
    ]:
        fitted = fit_to_context(trace, budget, keep=keep, marker=marker, tokenizer=tok)
        info = FitInfo.of(fitted)
        marker_ids = tok(marker, add_special_tokens=False)["input_ids"]
        assert len(fitted) <= budget and info.marker_tokens == len(marker_ids)
        assert len(fitted) == info.original_tokens - info.dropped_tokens + info.marker_tokens
        assert fitted.sentence_texts[where] == marker.strip()
        kept = trace.sentences[info.first_kept_sentence :][: info.kept_sentences]
        assert len(fitted.sentences) == len(kept) + 1
        reasoning = fitted.ids_of("reasoning")
        original = [i for s in kept for i in trace.ids_of(s)]
        assert list(reasoning) == (
            marker_ids + original if keep == "end" else original + marker_ids
        )
        again = Trace.from_ids(fitted.ids, tok)
        assert again.sentences == fitted.sentences and again.text == fitted.text
        with pytest.raises(ValueError, match="already shortened"):
            fit_to_context(fitted, len(fitted) - 1, keep=keep)
    # keep="start": the marker's leading line break joins the last kept sentence
    fitted = fit_to_context(trace, budget, keep="start", marker="\n[...]\n", tokenizer=tok)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    count = FitInfo.of(fitted).kept_sentences
    last = fitted.ids_of(fitted.sentences[count - 1])
    assert last == trace.ids_of(trace.sentences[count - 1]) + tuple(newline)


def test_whitespace_marker_joins_the_first_kept_sentence():
    tok = tokenizer("single")
    trace = r1_traces("single")[1]
    fitted = fit_to_context(trace, min_fit_length(trace) + 60, marker="\n", tokenizer=tok)
    info = FitInfo.of(fitted)
    assert fitted.text_of("think_open") + fitted.text_of("reasoning")[:1] == "<think>\n"
    assert len(fitted.sentences) == info.kept_sentences
    first = trace.sentences[info.first_kept_sentence]
    assert fitted.ids_of(fitted.sentences[0]) == tuple(tok("\n")["input_ids"]) + trace.ids_of(first)


class _LowercasingTokenizer:
    """A tokenizer whose decoding loses case, so markers do not survive it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, **kwargs):
        return self.inner(text, **kwargs)

    def decode(self, ids, **kwargs):
        return self.inner.decode(ids, **kwargs).lower()


def test_bad_markers_and_arguments_are_refused():
    tok = tokenizer("single")
    trace = r1_traces("single")[1]
    budget = min_fit_length(trace) + 60
    with pytest.raises(ValueError, match="sentence of its own"):
        fit_to_context(trace, budget, marker="[omitted] ", tokenizer=tok)
    with pytest.raises(ValueError, match="delimiter"):
        fit_to_context(trace, budget, marker="</think>\n", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer="):
        fit_to_context(trace, budget, marker="[...]\n")
    with pytest.raises(ValueError, match="decode back"):
        fit_to_context(trace, budget, marker="[Omitted]\n", tokenizer=_LowercasingTokenizer(tok))
    with pytest.raises(ContextLengthError, match="marker"):
        fit_to_context(trace, min_fit_length(trace) + 1, marker="[...]\n", tokenizer=tok)
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="max_tokens"):
            fit_to_context(trace, bad)
    with pytest.raises(ValueError, match="keep"):
        fit_to_context(trace, budget, keep="middle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a Trace"):
        fit_to_context([trace, "text"], budget)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="already shortened"):
        fitted = fit_to_context(trace, budget)
        fit_to_context(fitted, len(fitted) - 1, keep="start")


def test_the_traces_own_sentences_are_kept_even_where_resplitting_differs():
    """A partition the splitter would not give (two sentences merged, an empty sentence with
    no tokens) is still respected: the kept sentences are the trace's own."""
    trace = r1_traces("single")[1]
    s = trace.sentences
    own = [
        s[0],
        Segment("sentence_1", s[1].start, s[2].stop, s[1].char_start, s[2].char_stop),
        Segment("sentence_2", s[3].start, s[3].start, s[3].char_start, s[3].char_start),
        *[dataclasses.replace(seg, name=f"sentence_{k + 3}") for k, seg in enumerate(s[3:])],
    ]
    crafted = dataclasses.replace(trace, sentences=tuple(own))
    floor = min_fit_length(crafted)
    # keep="end" cutting at sentence 3's start: the empty sentence there goes with the cut
    fitted = fit_to_context(crafted, floor + sum(len(x) for x in own[3:]))
    assert FitInfo.of(fitted).first_kept_sentence == 3
    assert [fitted.ids_of(x) for x in fitted.sentences] == [crafted.ids_of(x) for x in own[3:]]
    # keep="start" cutting at the same place: the empty sentence stays (it has no tokens)
    fitted = fit_to_context(crafted, floor + len(own[0]) + len(own[1]), keep="start")
    assert FitInfo.of(fitted).kept_sentences == 3
    assert [fitted.ids_of(x) for x in fitted.sentences] == [crafted.ids_of(x) for x in own[:3]]
    assert fitted.text_of(fitted.sentences[1]).strip() == crafted.text_of(own[1]).strip()
    assert fitted.text_of(fitted.sentences[2]) == ""
    assert "".join(fitted.text_of(x) for x in fitted.sentences) == fitted.text_of("reasoning")
