import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits import Head, HeadIntervention, Trace


@pytest.fixture(scope="module")
def traces(tokenizer):
    return [
        Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tokenizer, append_eos=True),
        Trace.from_parts("Q: 2*5? ", "\n2*5=10. Yes.\n", " 10", tokenizer, append_eos=True),
    ]


def run(model, traces, iv=None):
    return rc.metrics.batch_logits(model, traces, iv)


def test_zero_ablation_at_answer_changes_only_answer_logits(gpt2, traces):
    base = run(gpt2, traces)
    out = run(gpt2, traces, HeadIntervention([(0, 1)], "zero", positions="answer"))
    for row, trace in enumerate(traces):
        answer = trace["answer"]
        torch.testing.assert_close(out[row, : answer.start], base[row, : answer.start])
        assert (out[row, answer.slice] - base[row, answer.slice]).abs().max() > 1e-4


def test_zero_equals_removing_the_heads_share_of_attn_out(gpt2, traces):
    trace = traces[0]
    head = Head(1, 2)
    _, cache = gpt2.run_with_cache(trace.tokens)
    z = cache["blocks.1.attn.hook_z"][0, :, head.head]  # [pos, d_head]
    w_o = gpt2.W_O[head.layer, head.head]  # [d_head, d_model]
    expected = cache["blocks.1.hook_attn_out"][0] - z @ w_o
    with HeadIntervention([head], "zero").apply(gpt2, trace):
        _, ablated = gpt2.run_with_cache(trace.tokens)
    got = ablated["blocks.1.hook_attn_out"][0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scale_one_and_mean_of_itself_change_nothing(gpt2, traces):
    trace = traces[0]
    base = run(gpt2, [trace])
    same = run(gpt2, [trace], HeadIntervention([(1, 3)], "scale", scale=1.0))
    torch.testing.assert_close(same, base)
    zero = run(gpt2, [trace], HeadIntervention([(1, 3)], "zero"))
    scaled = run(gpt2, [trace], HeadIntervention([(1, 3)], "scale", scale=0.0))
    torch.testing.assert_close(scaled, zero)
    # the mean over a single position is that position's own output: no change
    last = len(trace) - 1
    means = rc.mean_head_outputs(gpt2, [trace], [(1, 3)], positions=[last], by="pooled")
    out = run(gpt2, [trace], HeadIntervention([(1, 3)], "mean", positions=[last], means=means))
    torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)


def test_mean_outputs_pool_positions(gpt2, traces):
    head = Head(0, 0)
    means = rc.mean_head_outputs(gpt2, traces, [head], positions="answer", by="pooled")
    values = []
    for trace in traces:
        _, cache = gpt2.run_with_cache(trace.tokens)
        values.append(cache["blocks.0.attn.hook_z"][0, trace["answer"].slice, head.head])
    torch.testing.assert_close(means[head], torch.cat(values).mean(0), atol=1e-5, rtol=1e-5)


def test_gqa_heads_are_query_heads(qwen, tokenizer):
    trace = Trace.from_parts("Q ", "\nr.\n", " a b", qwen.tokenizer)
    base = qwen(trace.tokens)
    out = run(qwen, [trace], HeadIntervention([(1, 3)], "zero", positions="answer"))
    assert (out[0, trace["answer"].slice] - base[0, trace["answer"].slice]).abs().max() > 1e-5


def test_bad_input_messages(gpt2, traces):
    with pytest.raises(ValueError, match="mean_head_outputs"):
        HeadIntervention([(0, 0)], "mean")
    with pytest.raises(ValueError, match="action must be"):
        HeadIntervention([(0, 0)], "erase")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the model"):
        HeadIntervention([(9, 0)], "zero").hooks(gpt2, traces)
    with pytest.raises(IndexError, match="outside a trace"):
        HeadIntervention([(0, 0)], "zero", positions=[999]).hooks(gpt2, traces)


def test_patch_makes_the_head_output_equal_the_source_and_nothing_else(gpt2, traces):
    """Patching the reasoning writes the source's reasoning, offset by offset (the source's
    reasoning is longer and starts at the same position here; the answers are not patched)."""
    target, source = traces
    head = Head(1, 2)
    captured = rc.capture_head_outputs(gpt2, source, [head])
    _, before = gpt2.run_with_cache(target.tokens)
    iv = HeadIntervention([head], "patch", source=captured, positions="reasoning")
    with iv.apply(gpt2, target):
        _, after = gpt2.run_with_cache(target.tokens)
    z, z0 = after["blocks.1.attn.hook_z"][0], before["blocks.1.attn.hook_z"][0]
    mine, theirs = target["reasoning"], source["reasoning"]
    assert len(theirs) > len(mine)
    expected = captured[head][0, theirs.start : theirs.start + len(mine)]
    torch.testing.assert_close(z[mine.slice, head.head], expected)
    torch.testing.assert_close(z[: mine.start], z0[: mine.start])  # before it: untouched
    others = [h for h in range(gpt2.cfg.n_heads) if h != head.head]
    torch.testing.assert_close(z[:, others], z0[:, others])  # same layer, other heads: untouched
    torch.testing.assert_close(after["blocks.0.attn.hook_z"], before["blocks.0.attn.hook_z"])


def test_knockout_equals_renormalising_the_row_by_hand(gpt2, traces):
    trace = traces[0]
    head = Head(1, 0)
    _, before = gpt2.run_with_cache(trace.tokens)
    iv = HeadIntervention([head], "knockout", query="answer", key="reasoning")
    with iv.apply(gpt2, trace):
        _, after = gpt2.run_with_cache(trace.tokens)
    p = before["blocks.1.attn.hook_pattern"][0, head.head]
    expected = p.clone()
    answer, reasoning = trace["answer"].slice, trace["reasoning"].slice
    kept = p[answer].clone()
    kept[:, reasoning] = 0
    expected[answer] = kept / kept.sum(-1, keepdim=True)
    got = after["blocks.1.attn.hook_pattern"][0, head.head]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert got[answer][:, reasoning].abs().max() == 0
    # other heads of the layer keep their pattern
    torch.testing.assert_close(
        after["blocks.1.attn.hook_pattern"][0, 1:], before["blocks.1.attn.hook_pattern"][0, 1:]
    )


def test_patch_and_knockout_need_their_arguments(gpt2):
    with pytest.raises(ValueError, match="capture_head_outputs"):
        HeadIntervention([(0, 0)], "patch")
    with pytest.raises(ValueError, match="query= and key="):
        HeadIntervention([(0, 0)], "knockout", query="answer")


def test_answer_logprob_equals_a_one_trace_hand_computation(gpt2, traces):
    trace = traces[1]
    logprobs = gpt2(trace.tokens)[0].log_softmax(-1)
    answer = trace["answer"]
    expected = sum(
        logprobs[pos - 1, trace.ids[pos]].item() for pos in range(answer.start, answer.stop)
    )
    batched = rc.metrics.answer_logprob(gpt2, traces)
    assert batched[1] == pytest.approx(expected, abs=1e-4)


def test_normalized_logit_diff_and_its_nan_guard():
    import numpy as np

    with pytest.warns(RuntimeWarning, match="1 of 2 normalised logit differences are NaN"):
        out = rc.metrics.normalized_logit_diff([1.0, 3.0], [3.0, 3.0005], [-1.0, 3.0])
    assert out[0] == pytest.approx(0.5)
    assert np.isnan(out[1])


def test_effect_before_after_and_kl(gpt2, traces):
    iv = HeadIntervention([(1, 0), (1, 1)], "zero", positions="answer")
    effect = iv.effect(gpt2, traces)
    np_before = rc.metrics.answer_logprob(gpt2, traces)
    assert effect.before.tolist() == pytest.approx(np_before.tolist())
    assert effect.mean_diff == pytest.approx((effect.after - effect.before).mean())
    assert effect.ci[0] <= effect.mean_diff <= effect.ci[1]
    assert list(effect.to_frame().columns) == ["trace", "before", "after", "diff"]
    kl = rc.metrics.answer_kl(gpt2, traces, iv)
    assert (kl > 0).all()
    none = HeadIntervention([(1, 0)], "scale", scale=1.0)
    assert rc.metrics.answer_kl(gpt2, traces, none) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_resample_and_composition(gpt2, traces):
    target, other = traces
    head = Head(1, 1)
    source = rc.capture_head_outputs(gpt2, other, [head])
    patch = HeadIntervention([head], "patch", source=source, positions="reasoning")
    resample = HeadIntervention([head], "resample", source=source, positions="reasoning")
    patched, resampled = run(gpt2, [target], patch), run(gpt2, [target], resample)
    torch.testing.assert_close(resampled, patched)
    # two interventions compose: hooks concatenate, context managers nest
    a = HeadIntervention([(0, 0)], "zero", positions="answer")
    b = HeadIntervention([(1, 3)], "zero", positions="answer")
    both = HeadIntervention([(0, 0), (1, 3)], "zero", positions="answer")
    hooks = a.hooks(gpt2, target) + b.hooks(gpt2, target)
    combined = gpt2.run_with_hooks(target.tokens, fwd_hooks=hooks)
    torch.testing.assert_close(combined, run(gpt2, [target], both))
    with a.apply(gpt2, target), b.apply(gpt2, target):
        nested = gpt2(target.tokens)
    torch.testing.assert_close(nested, combined)


def test_planted_reasoning_head_matters_and_an_unused_later_position_does_not(lively):
    """A head planted to read the reasoning from the answer carries the answer; ablating a
    last-layer head at the prompt cannot reach any later position."""
    model = lively
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", model.tokenizer)
    answer_rows = slice(trace["answer"].start - 1, trace["answer"].stop)
    after_prompt = slice(trace["prompt"].stop, None)
    with rc.testing.planted_attention(model, [(1, 2)], query="answer", key="reasoning"):
        base = run(model, [trace])
        planted_off = run(model, [trace], HeadIntervention([(1, 2)], "zero", positions="answer"))
        unused = run(model, [trace], HeadIntervention([(2, 0)], "zero", positions="prompt"))
    assert (planted_off - base)[0, answer_rows].abs().max() > 1e-2
    # the ablation starts at the answer: nothing before it moves
    assert (planted_off - base)[0, : trace["answer"].start].abs().max() == 0
    assert (unused - base)[0, after_prompt].abs().max() <= 1e-5


def test_knockout_of_a_head_planted_on_the_reasoning_equals_a_hand_computation(lively):
    """Plant a head whose answer rows put (almost) all weight on the reasoning; knocking out
    answer→reasoning leaves the softmax of its remaining scores, which we compute by hand."""
    model = lively
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", model.tokenizer)
    answer, reasoning = trace["answer"], trace["reasoning"]
    layer, head = 1, 2

    def plant(scores, hook):
        scores = scores.clone()
        scores[:, head, answer.slice, reasoning.slice] += 30.0
        return scores

    point = f"blocks.{layer}.attn.hook_attn_scores"
    with model.hooks(fwd_hooks=[(point, plant)]):
        _, planted = model.run_with_cache(trace.tokens)
        iv = HeadIntervention([(layer, head)], "knockout", query="answer", key="reasoning")
        with iv.apply(model, trace):
            _, knocked = model.run_with_cache(trace.tokens)
    pattern = planted[f"blocks.{layer}.attn.hook_pattern"][0, head]
    assert pattern[answer.slice][:, reasoning.slice].sum(-1).min() > 0.999  # its only target
    scores = planted[point][0, head].clone()
    scores[answer.slice, reasoning.slice] -= 30.0  # the scores without the planted bonus
    v = planted[f"blocks.{layer}.attn.hook_v"][0, :, head]  # [key, d_head]
    for q in answer.positions:
        keys = [k for k in range(q + 1) if k not in reasoning]
        weights = torch.softmax(scores[q, keys], dim=-1)
        expected = weights @ v[keys]
        got = knocked[f"blocks.{layer}.attn.hook_z"][0, q, head]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_batch_logits_of_chosen_rows_equal_the_full_logits_there(request, model_name, traces):
    model = request.getfixturevalue(model_name)
    batch = [
        Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", model.tokenizer),
        Trace.from_parts("Q: 2*5? ", "\n2*5=10. Yes.\n", " 10", model.tokenizer),
    ]
    iv = HeadIntervention([(1, 0)], "zero", positions="answer")
    full = rc.metrics.batch_logits(model, batch, iv)
    rows = [[0, 5, len(batch[0]) - 1], [2]]
    some = rc.metrics.batch_logits(model, batch, iv, rows=rows)
    assert some.shape == (2, 3, full.shape[-1])
    torch.testing.assert_close(some[0], full[0, rows[0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(some[1], full[1, [2, 2, 2]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one non-empty list"):
        rc.metrics.batch_logits(model, batch, rows=[[0]])
    with pytest.raises(IndexError, match="rows must lie"):
        rc.metrics.batch_logits(model, batch, rows=[[0], [99]])
