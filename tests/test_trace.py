import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reasoning_circuits as rc
from reasoning_circuits import SEGMENT_NAMES, Segment, Trace, TraceFormatError

PROMPT = "Q: Tom has 3 apples and buys 12.50 worth more. How many? "
REASONING = "\nFirst, 3 + 4 = 7. Then e.g. check it.\n\n1. Done.\n"
ANSWER = " The answer is 7."


def test_segment_is_a_slice_and_validates():
    seg = Segment("answer", 3, 7, 10, 20)
    assert len(seg) == 4 and list(range(10))[seg.slice] == [3, 4, 5, 6]
    assert 3 in seg and 7 not in seg
    with pytest.raises(ValueError, match="start <= stop"):
        Segment("x", 5, 2)


def test_from_parts_segments_in_order_and_text_partition(tokenizer):
    trace = Trace.from_parts(PROMPT, REASONING, ANSWER, tokenizer, append_eos=True)
    assert tuple(trace.segments) == SEGMENT_NAMES
    segs = list(trace)
    assert segs[0].start == 0 and segs[-1].stop == len(trace)
    assert all(a.stop == b.start for a, b in itertools.pairwise(segs))
    assert "".join(trace.text_of(s) for s in segs) == trace.text
    assert trace.text_of("prompt") == PROMPT
    assert trace.text_of("reasoning") == REASONING
    assert trace.text_of("answer") == ANSWER
    assert len(trace["bos"]) == 1 and len(trace["eos"]) == 1
    assert tokenizer.decode(trace.ids_of("answer")) == ANSWER


@pytest.mark.parametrize("build", ["text", "ids"])
def test_text_and_ids_constructors_agree_with_parts(tokenizer, build):
    ref = Trace.from_parts(PROMPT, REASONING, ANSWER, tokenizer, append_eos=True)
    if build == "text":
        trace = Trace.from_text(ref.text, tokenizer)
    else:
        trace = Trace.from_ids(ref.ids, tokenizer)
    assert trace.ids == ref.ids
    assert dict(trace.segments) == dict(ref.segments)
    assert trace.sentences == ref.sentences


def test_split_delimiter_tokens_give_same_segment_text(tokenizer, split_tokenizer):
    single = Trace.from_parts(PROMPT, REASONING, ANSWER, tokenizer)
    split = Trace.from_text(single.text, split_tokenizer)
    assert len(split_tokenizer("<think>", add_special_tokens=False)["input_ids"]) > 1
    assert len(split["think_open"]) > 1 and len(single["think_open"]) == 1
    for name in SEGMENT_NAMES:
        assert split.text_of(name) == single.text_of(name)
    assert split.sentence_texts == single.sentence_texts


def test_sentences_cover_reasoning_in_chars_and_tokens(tokenizer):
    trace = Trace.from_parts(PROMPT, REASONING, ANSWER, tokenizer)
    reasoning = trace["reasoning"]
    assert trace.sentence_texts == ["First, 3 + 4 = 7.", "Then e.g. check it.", "1. Done."]
    assert "".join(trace.text_of(s) for s in trace.sentences) == trace.text_of(reasoning)
    assert trace.sentences[0].start == reasoning.start
    assert trace.sentences[-1].stop == reasoning.stop
    assert all(a.stop == b.start for a, b in zip(trace.sentences, trace.sentences[1:]))
    assert trace["sentence_1"] == trace.sentences[1]


def test_straddling_token_goes_to_segment_of_first_nonspace_char(tokenizer):
    # " The" straddles the sentence break: its space ends sentence 0, its word starts sentence 1
    trace = Trace.from_parts("Q", "\nA b. The c.", " ok", tokenizer)
    first_of_second = trace.sentences[1].start
    start, _ = trace.offsets[first_of_second]
    assert trace.text[start:].lstrip().startswith("The")


def test_partition_labels(tokenizer):
    trace = Trace.from_parts(PROMPT, REASONING, ANSWER, tokenizer)
    names, labels = trace.partition("sentences")
    assert names[3:6] == ["sentence_0", "sentence_1", "sentence_2"]
    assert len(labels) == len(trace) and (labels[1:] >= labels[:-1]).all()
    names, labels = trace.partition("segments")
    assert names == list(SEGMENT_NAMES)
    assert (labels == 3).sum() == len(trace["reasoning"])


def test_no_bos_no_eos_gives_empty_segments(tokenizer):
    trace = Trace.from_parts("Q", "\nr.\n", " a", tokenizer, prepend_bos=False)
    assert len(trace["bos"]) == 0 and len(trace["eos"]) == 0
    assert trace["prompt"].start == 0 and trace["answer"].stop == len(trace)


def test_r2a_convention_drops_last_token_from_answer(tokenizer):
    text = Trace.from_parts("Q", "\nr.\n", " The answer is 4.", tokenizer).text
    exact = Trace.from_text(text, tokenizer)
    r2a = Trace.from_text(text, tokenizer, convention="r2a")
    assert len(r2a["answer"]) == len(exact["answer"]) - 1
    assert r2a["eos"].start == len(r2a) - 1


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Q <think>\nreasoning without end", r"no '</think>' found after position \d+"),
        ("Q </think> x <think> y", r"comes before"),
        ("", r"empty"),
        ("just a question", r"no '<think>' found"),
        ("Q <think> a </think> b </think> c", r"strict=False"),
        ("Q <think> a <think> b </think> c", r"strict=False"),
    ],
)
def test_malformed_text_raises_trace_format_error(tokenizer, text, match):
    with pytest.raises(TraceFormatError, match=match):
        Trace.from_text(text, tokenizer)


def test_trace_format_error_is_value_error():
    assert issubclass(TraceFormatError, ValueError)


def test_non_strict_policy_last_open_before_first_close(tokenizer):
    text = "Explain the tag <think> please <think>\nreal reasoning.\n</think> answer </think> more"
    trace = Trace.from_text(text, tokenizer, strict=False)
    assert trace.text_of("reasoning") == "\nreal reasoning.\n"
    assert trace.text_of("prompt").endswith("please ")
    assert trace.text_of("answer") == " answer </think> more"


def test_ids_that_do_not_decode_to_text(tokenizer):
    ids = Trace.from_parts("Q", "\nr.\n", " a", tokenizer).ids
    with pytest.raises(TraceFormatError, match="do not decode"):
        Trace.from_ids(ids, tokenizer, text="something else")


def test_too_long_trace_raises_at_analysis(gpt2, tokenizer):
    trace = Trace.from_parts("Q", "\n" + "step. " * 400, " a", tokenizer)
    assert len(trace) > gpt2.cfg.n_ctx
    with pytest.raises(rc.ContextLengthError, match=f"{len(trace)} tokens.*{gpt2.cfg.n_ctx}"):
        rc.AttentionProfile.compute(gpt2, trace)


def test_round_trip_dict(tokenizer):
    trace = Trace.from_parts(PROMPT, REASONING, ANSWER, tokenizer, metadata={"id": "p1"})
    back = Trace.from_dict(trace.to_dict())
    assert back.ids == trace.ids and dict(back.segments) == dict(trace.segments)
    assert back.sentences == trace.sentences and back.metadata["id"] == "p1"
    assert torch.equal(back.tokens, trace.tokens)


_words = st.text(alphabet=st.sampled_from(list("ab é€ 12.\n")), min_size=1, max_size=30)


@given(_words, _words, _words)
@settings(max_examples=40, deadline=None)
def test_from_ids_offsets_reassemble_text_with_multibyte(tokenizer, prompt, reasoning, answer):
    ref = Trace.from_parts(prompt, reasoning, answer, tokenizer)
    trace = Trace.from_ids(ref.ids, tokenizer)
    pieces = [trace.text[a:b] for a, b in trace.offsets]
    assert "".join(pieces) == trace.text
    assert trace.text_of("reasoning") == reasoning
    assert trace.text_of("answer") == answer
