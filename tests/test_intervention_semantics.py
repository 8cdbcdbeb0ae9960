"""Interventions do what their names say (issue 9 §3), each measured fact a test.

* resample/patch take the source's value at the same *segment offset*, never a zero past the
  end of a shorter source nor the prompt of a longer one, and refuse what has no counterpart;
* mean ablation offers per-offset and per-token means; on the first tiny reasoner's
  (``tiny-reasoner-v1``) fixed ``The answer is N.`` template the pooled mean of L0H4 breaks
  the template, the per-offset mean does not;
* a knockout never gives a future key any weight, also in rows whose every key is blocked;
* the normalised logit difference refuses gaps that are small *relative to* the logit
  differences, and R2A's pair filter is offered.
"""

import re
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits import Head, HeadIntervention, Trace
from reasoning_circuits.errors import PairAlignmentError
from reasoning_circuits.generation import _grown, generate_answers
from reasoning_circuits.interventions import HeadMeans, HeadOutputs
from reasoning_circuits.organism.task import format_prompt

TEMPLATE = re.compile(r"^ The answer is \d\.$")


@pytest.fixture(scope="module")
def reasoner():
    return rc.load_model("tiny-reasoner")


def organism_trace(problem, tokenizer, answer=None):
    """Prompt, reference reasoning and answer (default the gold ``The answer is N.``)."""
    return Trace.from_parts(
        format_prompt(problem)[: -len(" <think>\n")] + " ",
        "\n" + problem.reasoning + " ",
        " " + problem.gold if answer is None else answer,
        tokenizer,
        metadata={"gold": str(problem.value)},
    )


@pytest.fixture(scope="module")
def organism(reasoner):
    problems = rc.organism.make_problems(30, seed=4, split="heldout")
    return sorted((organism_trace(p, reasoner.tokenizer) for p in problems), key=len)


@contextmanager
def recorded():
    """Record warnings instead of asserting them first, so a missing warning cannot hide
    whether the numbers themselves are right (they are checked before the warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def said(caught, category, text):
    return any(issubclass(w.category, category) and text in str(w.message) for w in caught)


def z_of(model, trace, layer, intervention=None):
    """``hook_z`` of one trace, ``[pos, head, d_head]``, with the intervention if given."""
    if intervention is None:
        _, cache = model.run_with_cache(trace.tokens)
    else:
        with intervention.apply(model, trace):
            _, cache = model.run_with_cache(trace.tokens)
    return cache[f"blocks.{layer}.attn.hook_z"][0]


def recomputed(model, trace, intervention, n):
    """Greedy answer recomputing the whole sequence at every step (no KV cache)."""
    start = trace["answer"].start
    ids = list(trace.ids[:start])
    for _ in range(n):
        hooks = intervention.hooks(model, _grown(trace, start + n), width=start + n)
        with torch.no_grad():
            logits = model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)
        token = int(logits[0, -1].argmax())
        if token == model.tokenizer.eos_token_id:
            break
        ids.append(token)
    return model.tokenizer.decode(ids[start:])


# ------------------------------------------------------------------ resample and patch


def test_resample_from_a_shorter_source_writes_its_answer_not_zeros(reasoner, organism):
    """The issue's case: the whole source is shorter than the target's prompt + reasoning.
    By absolute position every answer position would read past the source's end (zeros)."""
    source, target = organism[0], organism[-1]
    assert len(source) <= target["answer"].start  # the source ends before the answer starts
    assert len(source["answer"]) == len(target["answer"]) == 17
    head = Head(1, 2)
    captured = rc.capture_head_outputs(reasoner, source, [head])
    iv = HeadIntervention([head], "resample", source=captured, positions="answer")
    z = z_of(reasoner, target, 1, iv)[target["answer"].slice, head.head]
    expected = captured[head][0, source["answer"].slice]
    torch.testing.assert_close(z, expected)
    assert z.abs().sum(-1).min() > 0  # no position is a silent zero ablation


def test_resample_from_a_longer_source_writes_its_answer_not_its_reasoning(reasoner, organism):
    source, target = organism[-1], organism[0]
    head = Head(2, 5)
    captured = rc.capture_head_outputs(reasoner, source, [head])
    iv = HeadIntervention([head], "resample", source=captured, positions="answer")
    z = z_of(reasoner, target, 2, iv)[target["answer"].slice, head.head]
    torch.testing.assert_close(z, captured[head][0, source["answer"].slice])
    by_position = captured[head][0, target["answer"].slice]  # the source's reasoning there
    assert (z - by_position).abs().max() > 1e-3


def test_every_segment_maps_to_the_same_offset_of_the_source(gpt2, tokenizer):
    """Patching every position between two traces whose segments are all as long in the
    source: each target position reads the source at its segment and offset."""
    target = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tokenizer)
    source = Trace.from_parts(
        "Question: 3+4+5? ", "\nfirst 3+4=7, then 12.\n", " It is 12!", tokenizer
    )
    for name in rc.trace.SEGMENT_NAMES:
        assert len(source[name]) >= len(target[name])
    head = Head(1, 1)
    captured = rc.capture_head_outputs(gpt2, source, [head])
    z = z_of(gpt2, target, 1, HeadIntervention([head], "patch", source=captured))
    for name in rc.trace.SEGMENT_NAMES:
        mine, theirs = target[name], source[name]
        expected = captured[head][0, theirs.start : theirs.start + len(mine)]
        torch.testing.assert_close(z[mine.slice, head.head], expected)


def test_a_target_segment_longer_than_the_sources_is_refused(reasoner, organism):
    target = organism[0]
    problem = rc.organism.make_problems(1, seed=4, split="heldout")[0]
    short = organism_trace(problem, reasoner.tokenizer, answer=" 7.")  # a 3-token answer
    captured = rc.capture_head_outputs(reasoner, short, ["L1H2"])
    iv = HeadIntervention(["L1H2"], "resample", source=captured, positions="answer")
    with pytest.raises(PairAlignmentError) as caught:
        rc.metrics.batch_logits(reasoner, target, iv)
    message = str(caught.value)
    assert "answer offset 3" in message
    assert "its answer has 3 tokens, the target's 17" in message
    assert f"of trace 0 ({len(target)} tokens)" in message
    assert f"source trace 0 ({len(short)} tokens)" in message
    # restricted to the offsets the source has, the same source is fine
    first3 = list(range(target["answer"].start, target["answer"].start + 3))
    ok = HeadIntervention(["L1H2"], "resample", source=captured, positions=first3)
    rc.metrics.batch_logits(reasoner, target, ok)


def test_absolute_alignment_copies_position_by_position_and_refuses_past_the_end(gpt2, tokenizer):
    target = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tokenizer)
    source = Trace.from_parts("Q: 2+5? ", "\n2+5=7.\n", " It is 7.", tokenizer)
    longer = Trace.from_parts("Q: 2+5? ", "\n2+5=7 yes.\n", " It is 7.", tokenizer)
    head = Head(0, 3)
    for other in (source, longer):
        captured = rc.capture_head_outputs(gpt2, other, [head])
        iv = HeadIntervention([head], "patch", source=captured, align="absolute")
        z = z_of(gpt2, target, 0, iv)[:, head.head]
        torch.testing.assert_close(z, captured[head][0, : len(target)])
    shorter = Trace.from_parts("Q: 2+5? ", "\n7.\n", " It is 7.", tokenizer)
    captured = rc.capture_head_outputs(gpt2, shorter, [head])
    iv = HeadIntervention([head], "patch", source=captured, align="absolute")
    with pytest.raises(PairAlignmentError, match=f"position {len(shorter)} of trace 0"):
        rc.metrics.batch_logits(gpt2, target, iv)
    with pytest.raises(ValueError, match="align must be one of"):
        HeadIntervention([head], "patch", source=captured, align="absolut")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not use align"):
        HeadIntervention([head], "zero", align="segment")


def test_a_source_of_several_traces_pairs_with_its_targets_across_batches(reasoner, organism):
    """Batched metrics sort traces by length; each target must still get its own source."""
    targets = [organism[20], organism[2], organism[11]]  # not in length order
    sources = [organism[5], organism[29], organism[0]]
    heads = [Head(0, 5), Head(2, 5)]
    with pytest.raises(ValueError, match="targets=targets"):
        HeadIntervention(
            heads, "resample", source=rc.capture_head_outputs(reasoner, sources, heads)
        )
    paired = rc.capture_head_outputs(reasoner, sources, heads, targets=targets)
    iv = HeadIntervention(heads, "resample", source=paired, positions="answer")
    batched = rc.metrics.answer_logprob(reasoner, targets, iv, batch_size=2)
    alone = [
        rc.metrics.answer_logprob(
            reasoner,
            target,
            HeadIntervention(
                heads,
                "resample",
                source=rc.capture_head_outputs(reasoner, source, heads),
                positions="answer",
            ),
        )[0]
        for target, source in zip(targets, sources)
    ]
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    with pytest.raises(PairAlignmentError, match="not among the source's targets"):
        rc.metrics.answer_logprob(reasoner, organism[7], iv)
    with pytest.raises(TypeError, match="HeadOutputs"):
        HeadIntervention(heads, "patch", source={h: paired[h] for h in heads})  # type: ignore[arg-type]


def test_generation_with_a_resample_source_follows_the_answer_offsets(reasoner, organism):
    """Self-resampling changes nothing; a source whose answer is shorter than what is
    generated is refused at the step that needs the missing offset."""
    target = organism[3]
    head = Head(0, 5)
    plain = generate_answers(reasoner, target, max_new_tokens=17)
    itself = HeadIntervention(
        [head],
        "resample",
        source=rc.capture_head_outputs(reasoner, target, [head]),
        positions="answer",
    )
    assert generate_answers(reasoner, target, itself, max_new_tokens=17) == plain
    short = organism_trace(rc.organism.make_problems(1, seed=9)[0], reasoner.tokenizer, " The")
    cut = HeadIntervention(
        [head],
        "resample",
        source=rc.capture_head_outputs(reasoner, short, [head]),
        positions="answer",
    )
    with pytest.raises(PairAlignmentError, match="max_new_tokens"):
        generate_answers(reasoner, target, cut, max_new_tokens=17)


def test_cached_generation_with_a_resample_source_equals_recomputation(lively):
    tok = lively.tokenizer
    source = Trace.from_parts("Q: 2 + 2 = ", "\n2 + 2 = 4.\n", " 4 4 4 4 4 4 4 4", tok)
    trace = Trace.from_parts("Q: 5 + 1 = ", "\n5 + 1 = 6, so it is six.\n", " 6", tok)
    heads = [(1, 0), (2, 1)]
    iv = HeadIntervention(
        heads, "resample", source=rc.capture_head_outputs(lively, source, heads), positions="answer"
    )
    ours = generate_answers(lively, trace, iv, max_new_tokens=6)
    assert ours == [recomputed(lively, trace, iv, 6)]
    assert ours != generate_answers(lively, trace, None, max_new_tokens=6)


# ------------------------------------------------------------------------------- means


def test_per_offset_and_per_token_means_equal_hand_computed_means(gpt2, tokenizer):
    traces = [
        Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7. It is.", tokenizer),
        Trace.from_parts("Q: 2*5? ", "\n2*5=10. Yes.\n", " It is 10", tokenizer),
        Trace.from_parts("Q: 1? ", "\n1.\n", " 1", tokenizer),
    ]
    head = Head(1, 2)
    outputs = [z_of(gpt2, t, 1)[t["answer"].slice, head.head] for t in traces]
    tokens = [t.ids[t["answer"].slice] for t in traces]
    by_offset = rc.mean_head_outputs(gpt2, traces, [head], by="segment_offset", batch_size=2)
    longest = max(map(len, outputs))
    assert by_offset[head].shape == (longest, gpt2.cfg.d_head)
    for offset in range(longest):
        have = [o[offset] for o in outputs if len(o) > offset]
        assert int(by_offset.counts[offset]) == len(have)
        torch.testing.assert_close(by_offset[head][offset], torch.stack(have).mean(0))
    by_token = rc.mean_head_outputs(gpt2, traces, [head], by="token")
    every = sorted({i for ids in tokens for i in ids})
    assert list(by_token.token_ids) == every
    for row, token in enumerate(every):
        have = [o[k] for o, ids in zip(outputs, tokens) for k, i in enumerate(ids) if i == token]
        assert int(by_token.counts[row]) == len(have)
        torch.testing.assert_close(by_token[head][row], torch.stack(have).mean(0))
    pooled = torch.cat(outputs).mean(0)
    for means in (by_offset, by_token):
        torch.testing.assert_close(means.pooled[head], pooled)


def test_per_offset_means_of_the_trace_itself_change_nothing_pooled_ones_do(gpt2, tokenizer):
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tokenizer)
    head = Head(0, 1)
    base = rc.metrics.batch_logits(gpt2, trace)
    results = {}
    for by in ("segment_offset", "pooled"):
        means = rc.mean_head_outputs(gpt2, trace, [head], by=by)
        iv = HeadIntervention([head], "mean", positions="answer", means=means)
        results[by] = rc.metrics.batch_logits(gpt2, trace, iv)
    torch.testing.assert_close(results["segment_offset"], base, atol=1e-5, rtol=1e-5)
    assert (results["pooled"] - base).abs().max() > 1e-4


@pytest.fixture(scope="module")
def v1():
    """The first tiny reasoner, whose model card reported L0H4's template "cost"."""
    return rc.load_model("tiny-reasoner-v1")


@pytest.fixture(scope="module")
def l0h4_means(v1, organism):
    """L0H4's pooled and per-offset answer means over 30 held-out traces (v1)."""
    return {
        by: rc.mean_head_outputs(v1, organism, ["L0H4"], by=by, batch_size=30)
        for by in ("pooled", "segment_offset")
    }


def test_pooled_mean_of_l0h4_breaks_the_answer_template_per_offset_mean_keeps_it(v1, l0h4_means):
    """v1's model card's L0H4 "cost" was the template: with one pooled mean in every answer
    position the model no longer predicts ``answer`` after ``The`` (teacher-forced argmax
    right at answer offset 5 on 58% of 40 traces, measured), while per-offset means keep
    every template token (>= 97.5%) and the digit (100%)."""
    tests = [
        organism_trace(p, v1.tokenizer)
        for p in rc.organism.make_problems(40, seed=5, split="heldout")
    ]
    head = Head(0, 4)

    def right_per_offset(iv):
        rows = [list(range(t["answer"].start - 1, t["answer"].stop - 1)) for t in tests]
        predicted = rc.metrics.batch_logits(v1, tests, iv, rows=rows).argmax(-1)
        gold = torch.tensor([t.ids[t["answer"].slice] for t in tests])
        return (predicted == gold).float().mean(0)  # [17 answer offsets]

    assert right_per_offset(None).min() == 1.0
    rate = {}
    for by in ("pooled", "segment_offset"):
        iv = HeadIntervention([head], "mean", positions="answer", means=l0h4_means[by])
        rate[by] = right_per_offset(iv)
    assert rate["pooled"][5] < 0.8  # " The a|nswer": the template breaks
    assert rate["segment_offset"].min() >= 0.95
    digit = 15  # " The answer is N." : N is answer offset 15
    assert rate["segment_offset"][digit] == 1.0 and rate["pooled"][digit] == 1.0


def test_generated_template_survives_per_offset_means_not_the_pooled_mean(v1, l0h4_means):
    """Generated, not teacher-forced: two held-out problems on which the pooled mean of v1's L0H4
    writes ``The answer 0swer`` and ``The 4. answ=is 4`` (measured)."""
    tests = [
        organism_trace(p, v1.tokenizer)
        for p in rc.organism.make_problems(2, seed=5, split="heldout")
    ]
    head = Head(0, 4)
    answers = {}
    for by in ("pooled", "segment_offset"):
        iv = HeadIntervention([head], "mean", positions="answer", means=l0h4_means[by])
        answers[by] = generate_answers(v1, tests, iv, max_new_tokens=17)
    assert not any(TEMPLATE.match(a) for a in answers["pooled"]), answers
    assert answers["segment_offset"] == [" " + t.text_of("answer").strip() for t in tests]


@pytest.mark.parametrize("by", ["segment_offset", "token"])
def test_position_aware_means_in_cached_generation_equal_recomputation(lively, by):
    """The per-offset mean follows the generated answer's offsets and the per-token mean reads
    the token generated at each step (from the forward pass itself, not the trace)."""
    tok = lively.tokenizer
    reference = [
        Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7 7 7 7 7 7 7 7", tok),
        Trace.from_parts("Q: 2 + 2 = ", "\n2 + 2 = 4.\n", " 4", tok),
    ]
    means = rc.mean_head_outputs(lively, reference, [(1, 0), (2, 1)], by=by, fallback="pooled")
    iv = HeadIntervention([(1, 0), (2, 1)], "mean", positions="answer", means=means)
    trace = Trace.from_parts("Q: 5 + 1 = ", "\n5 + 1 = 6.\n", " 6", tok)
    ours = generate_answers(lively, trace, iv, max_new_tokens=6)
    assert ours == [recomputed(lively, trace, iv, 6)]
    assert ours != generate_answers(lively, trace, None, max_new_tokens=6)


def test_positions_the_means_do_not_cover_are_refused_or_take_the_pooled_mean(gpt2, tokenizer):
    reference = [Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " 7", tokenizer)]
    target = Trace.from_parts("Q: 2*5? ", "\n2*5=10.\n", " It is 10", tokenizer)
    head = Head(1, 3)
    strict = rc.mean_head_outputs(gpt2, reference, [head], by="segment_offset")
    n = len(reference[0]["answer"])
    assert len(target["answer"]) > n
    iv = HeadIntervention([head], "mean", positions="answer", means=strict)
    with pytest.raises(ValueError, match=f"no mean for answer offset {n}; the reference"):
        rc.metrics.batch_logits(gpt2, target, iv)
    lenient = rc.mean_head_outputs(gpt2, reference, [head], by="segment_offset", fallback="pooled")
    z = z_of(gpt2, target, 1, HeadIntervention([head], "mean", positions="answer", means=lenient))
    answer = target["answer"]
    written = z[answer.slice, head.head]
    torch.testing.assert_close(written[:n], lenient[head])  # covered offsets: their own means
    torch.testing.assert_close(written[n:], lenient.pooled[head].expand(len(answer) - n, -1))
    by_token = rc.mean_head_outputs(gpt2, reference, [head], by="token")
    iv = HeadIntervention([head], "mean", positions="answer", means=by_token)
    with pytest.raises(
        ValueError, match=r"token id \d+, which the reference traces' answer never holds"
    ):
        rc.metrics.batch_logits(gpt2, target, iv)
    # positions outside the means' segment, or no positions at all, are refused
    with pytest.raises(ValueError, match="outside that segment"):
        rc.metrics.batch_logits(
            gpt2, target, HeadIntervention([head], "mean", positions="reasoning", means=strict)
        )
    with pytest.raises(ValueError, match="pass positions='answer'"):
        HeadIntervention([head], "mean", means=strict)


def test_the_mean_is_a_choice_made_explicitly(gpt2, tokenizer):
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " 7", tokenizer)
    with pytest.warns(UserWarning, match="without by="):
        means = rc.mean_head_outputs(gpt2, trace, ["L0H0"])
    assert isinstance(means, HeadMeans) and means.by == "pooled"
    with pytest.raises(ValueError, match="did you mean 'segment_offset'"):
        rc.mean_head_outputs(gpt2, trace, ["L0H0"], by="segment_offsets")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a segment name"):
        rc.mean_head_outputs(gpt2, trace, ["L0H0"], by="token", positions=[1, 2])
    with pytest.raises(ValueError, match="fallback must be one of"):
        rc.mean_head_outputs(gpt2, trace, ["L0H0"], by="pooled", fallback="zero")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- knockout


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_a_knockout_never_gives_the_future_any_weight(request, model_name):
    """Before: a row whose every visible key was blocked put (n-1)/n of its mass on future
    keys (0.93 at 15 positions). Now such rows read nothing (zero pattern, zero output) and
    no row anywhere gives a future key weight."""
    model = request.getfixturevalue(model_name)
    trace = Trace.from_parts(
        "Q: 3+4? ", "\n3+4=7.\n", " It is 7.", model.tokenizer, prepend_bos=False
    )
    assert len(trace["bos"]) == 0
    head = Head(1, 1)
    iv = HeadIntervention([head], "knockout", query="prompt", key="prompt")
    with recorded() as caught, iv.apply(model, trace):
        _, cache = model.run_with_cache(trace.tokens)
    pattern = cache["blocks.1.attn.hook_pattern"][0, head.head]  # [query, key]
    assert pattern.triu(diagonal=1).abs().max() == 0  # no future key, in any row
    prompt = trace["prompt"].slice
    assert pattern[prompt].abs().max() == 0  # every prompt row reads nothing
    assert cache["blocks.1.attn.hook_z"][0, prompt, head.head].abs().max() == 0
    _, plain = model.run_with_cache(trace.tokens)  # rows outside the query: untouched
    after = slice(trace["prompt"].stop, None)
    torch.testing.assert_close(pattern[after], plain["blocks.1.attn.hook_pattern"][0, 1][after])
    assert said(caught, UserWarning, f"{len(trace['prompt'])} query rows have every key")


def test_a_knockout_of_the_bos_row_is_the_issues_case(gpt2, tokenizer):
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It", tokenizer)
    iv = HeadIntervention([(0, 2)], "knockout", query="bos", key="bos")
    with recorded() as caught, iv.apply(gpt2, trace):
        _, cache = gpt2.run_with_cache(trace.tokens)
    pattern = cache["blocks.0.attn.hook_pattern"][0, 2]
    assert pattern.triu(diagonal=1).abs().max() == 0  # before: 19/20 of row 0 in the future
    assert pattern[0].abs().max() == 0
    assert said(caught, UserWarning, "1 query rows")


# ---------------------------------------------------------------- normalised logit diff


def test_a_tiny_gap_is_nan_not_500_percent_recovery():
    with recorded() as caught:
        out = rc.metrics.normalized_logit_diff(0.01, 0.002, 0.0)
    assert np.isnan(out)  # before: 5.0
    assert said(caught, RuntimeWarning, "1 of 1 normalised")


def test_the_gap_threshold_is_relative_to_the_logit_differences():
    with recorded() as caught:
        out = rc.metrics.normalized_logit_diff(
            [1.0, 10.0, 9.9], [3.0, 12.0, 10.0], [-1.0, 8.0, 9.8]
        )
    assert out[0] == pytest.approx(0.5)
    assert out[1] == pytest.approx(0.5)  # gap 4 next to logit differences of 12: clear
    assert np.isnan(out[2])  # gap 0.2 between 10.0 and 9.8: 2%, noise
    assert said(caught, RuntimeWarning, "1 of 3")
    # lowering rel_tol admits it again, explicitly
    assert rc.metrics.normalized_logit_diff(9.9, 10.0, 9.8, rel_tol=0.01) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="rel_tol"):
        rc.metrics.normalized_logit_diff(1.0, 2.0, 0.0, rel_tol=-1)


def test_pair_filter_keeps_pairs_whose_answer_flips():
    clean = np.array([2.0, 2.0, 0.5, 2.0, np.nan])
    corrupted = np.array([-2.0, 0.5, -2.0, -1.0, -2.0])
    keep = rc.metrics.pair_filter(clean, corrupted, margin=1.0)
    assert keep.tolist() == [True, False, False, False, False]
    assert rc.metrics.pair_filter(clean, corrupted, margin=0.0).tolist() == [
        True,
        False,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="margin"):
        rc.metrics.pair_filter(clean, corrupted, margin=-1.0)


def test_patch_sweep_normalised_follows_the_relative_threshold():
    sweep = rc.patching.PatchSweep(
        np.array([[0.01, 0.0]]), ("layer", "head"), {"layer": [0], "head": [0, 1]}, 0.002, 0.0
    )
    with recorded() as caught:
        assert np.isnan(sweep.normalized()).all()  # before: [5.0, 0.0]
    assert said(caught, RuntimeWarning, "2 of 2")
    wide = rc.patching.PatchSweep(
        np.array([[1.0, 0.0]]), ("layer", "head"), {"layer": [0], "head": [0, 1]}, 2.0, -2.0
    )
    np.testing.assert_allclose(wide.normalized(), [[0.75, 0.5]])


def test_head_outputs_value_checks_its_shape(gpt2, tokenizer):
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " 7", tokenizer)
    with pytest.raises(ValueError, match="expected \\[1, >= "):
        HeadOutputs({Head(0, 0): torch.zeros(1, 3, 16)}, (trace,))
    outputs = rc.capture_head_outputs(gpt2, trace, ["L0H0"])
    assert Head(0, 0) in outputs and outputs[Head(0, 0)].shape[:2] == (1, len(trace))
