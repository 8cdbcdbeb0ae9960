"""Batched answer generation equals generating each trace alone, under every intervention.

``generate_answers`` left-pads a batch of traces of different lengths, so column c of row r is
position ``c - pad[r]`` of its trace. The reference below is the former library path (each
trace alone, unpadded, KV cache, hooks built with the trace's own offset): kept here only as
the yardstick. Both run greedy decoding, so any position the batched hooks miss, or a pad
column they write, or a row that reads another row's cache, changes some string.

The models: the ``lively`` GPT-2 of conftest (learned positions) and a Qwen2-shaped model
(rotary positions, grouped-query attention) whose weights are redrawn with std 0.3, so that
its greedy tokens depend on the input (at the usual 0.02 its logits are nearly flat).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits import Head, HeadIntervention, Trace
from reasoning_circuits.errors import PairAlignmentError
from reasoning_circuits.generation import _grown, answers_correct, generate_answers
from reasoning_circuits.trace import pad_traces

NEW = 6  # new tokens per answer in the toy-model tests


def one_at_a_time(model, traces, intervention=None, *, max_new_tokens=NEW, stop=None):
    """Reference: each trace alone, unpadded, KV-cached, hooks at the trace's own offset."""
    tokenizer, answers = model.tokenizer, []
    for trace in traces:
        start = trace["answer"].start
        grown = _grown(trace, start + max_new_tokens)
        tokens = torch.tensor([trace.ids[:start]])
        new: list[int] = []
        cache = None
        for step in range(max_new_tokens):
            offset = 0 if cache is None else start + step - 1
            hooks = intervention.hooks(model, grown, offset=offset) if intervention else []
            with torch.no_grad(), model.hooks(fwd_hooks=hooks):
                logits, cache = model(
                    tokens if cache is None else tokens[:, -1:],
                    past_key_values=cache,
                    return_type="logits_and_cache",
                )
            token = int(logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
            if stop is not None and stop in tokenizer.decode(new):
                break
        answers.append(tokenizer.decode(new))
    return answers


@pytest.fixture(scope="module")
def lively_qwen():
    model = rc.testing.tiny_qwen2(seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.original_model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(params=["gpt2", "qwen2"])
def model(request, lively, lively_qwen):
    return {"gpt2": lively, "qwen2": lively_qwen}[request.param]


def targets(tokenizer):
    """Five traces whose prefixes (prompt + reasoning) have five different lengths."""
    parts = [
        ("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7"),
        ("Q: 12 + 5?", "\nadd them: 17.\n", ""),
        ("Question: what is 9 times 8, please? ", "\n9 * 8 = 72, so 72.\n", " 72"),
        ("Q: 1+1", "\nit is 2\n", " 2"),
        ("Q: a long one: 15 - 6 + 2 = ", "\nfirst 15 - 6 = 9, then 9 + 2 = 11.\n", " 11"),
    ]
    traces = [Trace.from_parts(p, r, a, tokenizer) for p, r, a in parts]
    assert len({t["answer"].start for t in traces}) == len(traces)
    return traces


def sources(tokenizer):
    """Other problems, one per target, with answers longer than NEW tokens."""
    long = " the answer is certainly this number here"
    parts = [
        ("Q: 8 - 2 = ", "\n8 - 2 = 6.\n"),
        ("Q: 30 / 3?", "\ndivide: 10.\n"),
        ("Q: 2 to the 5th? ", "\n2, 4, 8, 16, 32.\n"),
        ("Q: 7*7", "\n49\n"),
        ("Q: 100 + 1 = ", "\nthat is 101 of course.\n"),
    ]
    out = [Trace.from_parts(p, r, long, tokenizer) for p, r in parts]
    assert min(len(t["answer"]) for t in out) >= NEW
    return out


HEADS = [Head(1, 0), Head(0, 2)]
KINDS = [
    "none",
    "zero",
    "scale",
    "mean-pooled",
    "mean-segment_offset",
    "mean-token",
    "patch",
    "resample",
    "knockout",
]


def make(kind, model, traces):
    tok = model.tokenizer
    if kind == "none":
        return None
    if kind == "zero":
        return HeadIntervention(HEADS, "zero", positions="answer")
    if kind == "scale":  # every position, the prompt and reasoning included
        return HeadIntervention([Head(0, 1)], "scale", scale=3.0)
    if kind == "knockout":
        return HeadIntervention(HEADS, "knockout", query="answer", key="reasoning")
    if kind.startswith("mean"):
        by = kind.split("-")[1]
        refs = sources(tok)
        if by == "token":  # references whose answers hold the tokens generation writes
            plain = one_at_a_time(model, traces)
            refs = [
                Trace.from_parts(t.text_of("prompt"), t.text_of("reasoning"), a, tok)
                for t, a in zip(traces, plain)
                if a
            ]
        means = rc.mean_head_outputs(
            model, refs, HEADS, positions="answer", by=by, fallback="pooled"
        )
        return HeadIntervention(HEADS, "mean", positions="answer", means=means)
    if kind == "patch":  # one source per target, paired by targets=
        captured = rc.capture_head_outputs(model, sources(tok), HEADS, targets=traces)
        return HeadIntervention(HEADS, "patch", positions="answer", source=captured)
    assert kind == "resample"  # one source for every target
    captured = rc.capture_head_outputs(model, sources(tok)[2], HEADS)
    return HeadIntervention(HEADS, "resample", positions="answer", source=captured)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_one_trace_at_a_time(model, kind):
    traces = targets(model.tokenizer)
    intervention = make(kind, model, traces)
    expected = one_at_a_time(model, traces, intervention)
    assert generate_answers(model, traces, intervention, max_new_tokens=NEW) == expected
    assert sum(map(bool, expected)) >= 3  # strings with something in them to compare
    if intervention is not None:  # the intervention really acts during generation
        assert expected != one_at_a_time(model, traces)


@pytest.mark.parametrize("kind", ["none", "mean-segment_offset", "patch", "knockout"])
def test_batch_size_does_not_change_the_answers(lively, kind):
    traces = targets(lively.tokenizer)
    intervention = make(kind, lively, traces)
    results = [
        generate_answers(lively, traces, intervention, max_new_tokens=NEW, batch_size=b)
        for b in (1, 2, 8)
    ]
    assert all(r == results[0] for r in results)


def test_rows_that_stop_early_leave_the_batch_without_disturbing_the_others(model):
    traces = targets(model.tokenizer)
    full = one_at_a_time(model, traces, max_new_tokens=10)
    # a character that occurs in the middle of some answers but not all
    stop = next(c for c in "".join(full) if sum(c in a[1:-1] for a in full) in range(1, len(full)))
    expected = one_at_a_time(model, traces, max_new_tokens=10, stop=stop)
    got = generate_answers(model, traces, max_new_tokens=10, stop=stop)
    assert got == expected
    assert len({len(model.tokenizer.encode(a)) for a in got}) > 1  # rows stopped apart


def test_answers_correct_passes_batch_size_through(lively):
    traces = targets(lively.tokenizer)
    gold = one_at_a_time(lively, traces)
    grader = str.__eq__
    ones = answers_correct(lively, traces, gold=gold, grader=grader, max_new_tokens=NEW)
    assert ones.tolist() == [1.0] * len(traces)
    for batch_size in (1, 3):
        again = answers_correct(
            lively, traces, gold=gold, grader=grader, max_new_tokens=NEW, batch_size=batch_size
        )
        assert again.tolist() == ones.tolist()
    with pytest.raises(ValueError, match="batch_size"):
        answers_correct(lively, traces, gold=gold, batch_size=0)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_bad_batch_sizes_are_refused(lively, batch_size):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        generate_answers(lively, targets(lively.tokenizer), batch_size=batch_size)


# ------------------------------------------------------------ the hooks of a left-padded batch


def left_padded(traces):
    width = max(map(len, traces))
    pads = [width - len(t) for t in traces]
    tokens = torch.zeros(len(traces), width, dtype=torch.long)
    mask = torch.zeros(len(traces), width, dtype=torch.long)
    for row, (trace, pad) in enumerate(zip(traces, pads)):
        tokens[row, pad:] = torch.tensor(trace.ids)
        mask[row, pad:] = 1
    return tokens, mask, pads


@pytest.mark.parametrize("kind", KINDS[1:])
def test_left_padded_hooks_equal_each_trace_alone(model, kind):
    """A whole left-padded forward with ``left_pad=`` gives every real position the logits
    of the trace run alone with the unpadded hooks."""
    traces = targets(model.tokenizer)
    intervention = make(kind, model, traces)
    tokens, mask, pads = left_padded(traces)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hooks = intervention.hooks(model, traces, left_pad=pads)
    with torch.no_grad():
        batched = model.run_with_hooks(
            tokens, attention_mask=mask, position_ids=positions, fwd_hooks=hooks
        )
        plain = model(tokens, attention_mask=mask, position_ids=positions)
    changed = False
    for row, (trace, pad) in enumerate(zip(traces, pads)):
        with torch.no_grad():
            alone = model.run_with_hooks(trace.tokens, fwd_hooks=intervention.hooks(model, trace))
        torch.testing.assert_close(batched[row, pad:], alone[0], atol=1e-4, rtol=1e-4)
        changed |= bool((batched[row, pad:] - plain[row, pad:]).abs().max() > 1e-3)
    assert changed


def test_no_left_pad_and_zero_left_pad_are_the_same_hooks(lively):
    traces = targets(lively.tokenizer)
    tokens, mask = pad_traces(traces)
    for kind in ("zero", "mean-segment_offset", "patch", "knockout"):
        intervention = make(kind, lively, traces)
        runs = []
        for left_pad in (None, [0] * len(traces)):
            hooks = intervention.hooks(lively, traces, left_pad=left_pad)
            with torch.no_grad():
                runs.append(lively.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks))
        torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


def test_pad_columns_are_never_written(lively):
    """``zero`` on every position leaves each pad column's ``hook_z`` as the model made it."""
    traces = targets(lively.tokenizer)
    tokens, mask, pads = left_padded(traces)
    iv = HeadIntervention([Head(0, 0)], "zero")
    seen = {}

    def grab(z, *, hook):
        seen["z"] = z.clone()

    hooks = [*iv.hooks(lively, traces, left_pad=pads), ("blocks.0.attn.hook_z", grab)]
    with torch.no_grad():
        lively.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
        _, cache = lively.run_with_cache(tokens, attention_mask=mask)
    z, untouched = seen["z"][:, :, 0], cache["blocks.0.attn.hook_z"][:, :, 0]
    for row, pad in enumerate(pads):
        assert z[row, pad:].abs().max() == 0  # every real position zeroed
        torch.testing.assert_close(z[row, :pad], untouched[row, :pad])  # pads as they were
    assert max(pads) > 0


@pytest.mark.parametrize(
    "left_pad", [[0, 1], [0, 1, 2, 3, -1], [0, 0, 0.5, 0, 0], [0, True, 0, 0, 0]]
)
def test_bad_left_pads_are_refused(lively, left_pad):
    traces = targets(lively.tokenizer)
    with pytest.raises(ValueError, match="left_pad must give one int >= 0 per row"):
        HeadIntervention(HEADS, "zero").hooks(lively, traces, left_pad=left_pad)
    with pytest.raises(TypeError, match="left_pad must be a sequence of ints"):
        HeadIntervention(HEADS, "zero").hooks(lively, traces, left_pad=3)


def test_left_pad_takes_numpy_and_tensor_counts(lively):
    traces = targets(lively.tokenizer)
    iv = HeadIntervention(HEADS, "zero", positions="answer")
    pads = [2, 0, 1, 0, 3]
    width = max(len(t) + p for t, p in zip(traces, pads))
    tokens = torch.zeros(len(traces), width, dtype=torch.long)
    for row, (trace, pad) in enumerate(zip(traces, pads)):
        tokens[row, pad : pad + len(trace)] = torch.tensor(trace.ids)
    runs = []
    for given in (pads, np.asarray(pads), torch.tensor(pads)):
        hooks = iv.hooks(lively, traces, left_pad=given)
        with torch.no_grad():
            runs.append(lively.run_with_hooks(tokens, fwd_hooks=hooks))
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    torch.testing.assert_close(runs[0], runs[2], atol=0, rtol=0)


def test_refusals_name_the_trace_position_not_the_batch_column(lively):
    """A source whose answer has k < NEW tokens cannot patch answer offset k: the batched
    refusal names the same trace position as the one-trace refusal, not a shifted column."""
    tok = lively.tokenizer
    traces = targets(tok)
    short = Trace.from_parts("Q: 8 - 2 = ", "\n8 - 2 = 6.\n", " 6.", tok)
    k = len(short["answer"])
    assert 0 < k < NEW - 1
    iv = HeadIntervention(
        HEADS, "resample", positions="answer", source=rc.capture_head_outputs(lively, short, HEADS)
    )
    longest = max(traces, key=lambda t: t["answer"].start)
    position = longest["answer"].start + k
    with pytest.raises(PairAlignmentError, match=rf"answer offset {k} \(position {position}\)"):
        one_at_a_time(lively, [longest], iv)
    # in a batch the shortest prefix has the most padding; it is the first row to refuse
    shortest = min(traces, key=lambda t: t["answer"].start)
    position = shortest["answer"].start + k
    with pytest.raises(PairAlignmentError, match=rf"answer offset {k} \(position {position}\)"):
        generate_answers(lively, traces, iv, max_new_tokens=NEW)

    means = rc.mean_head_outputs(lively, [short], HEADS, positions="answer", by="segment_offset")
    iv = HeadIntervention(HEADS, "mean", positions="answer", means=means)
    with pytest.raises(ValueError, match=rf"position {position} .*answer offset {k};"):
        generate_answers(lively, traces, iv, max_new_tokens=NEW)


# ------------------------------------------------------------------------ the tiny reasoner


@pytest.fixture(scope="module")
def reasoner():
    return rc.load_model("tiny-reasoner")


def test_tiny_reasoner_batched_equals_alone_and_mean_ablating_l0h5_collapses_accuracy(reasoner):
    from reasoning_circuits.organism import generate

    problems = rc.organism.make_problems(10, seed=11, split="heldout")
    traces = [Trace.from_ids(g.ids, reasoner.tokenizer) for g in generate(reasoner, problems)]
    assert len({t["answer"].start for t in traces}) > 3  # prefixes of different lengths
    means = rc.mean_head_outputs(
        reasoner, traces, [Head(0, 5)], positions="answer", by="segment_offset", fallback="pooled"
    )
    ablate = HeadIntervention([Head(0, 5)], "mean", positions="answer", means=means)
    # one past the longest answer: rows end at EOS (or are cut if the ablation runs on)
    n = max(len(t["answer"]) for t in traces) + 1
    gold = [str(p.value) for p in problems]
    accuracy = []
    for intervention in (None, ablate):
        expected = one_at_a_time(reasoner, traces, intervention, max_new_tokens=n)
        got = generate_answers(reasoner, traces, intervention, max_new_tokens=n, batch_size=8)
        assert got == expected
        grades = rc.grading.grade_many(got, gold, kind="math", think="optional")
        accuracy.append(sum(g.correct for g in grades) / len(grades))
    assert accuracy[0] == 1.0
    assert accuracy[1] <= 0.5  # the model card: 0.980 -> 0.120 on 250 problems (half B)
