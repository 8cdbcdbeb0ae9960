"""Bad input is refused with a message that names the fix (issue: no silent wrong results)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits import HeadIntervention
from reasoning_circuits.attention import AttentionProfile


def _trace(tokenizer, reasoning="\n2+2=4. So 4.\n", answer=" The answer is 4.", **kw):
    return rc.Trace.from_parts("Q: 2+2?", reasoning, answer, tokenizer, **kw)


def _long_trace(tokenizer, n_tokens: int, **kw):
    sentence = " Then 12 + 30 = 42."
    reasoning = sentence * (n_tokens // 6)
    trace = _trace(tokenizer, reasoning=reasoning, **kw)
    assert len(trace) > n_tokens
    return trace


# ----------------------------------------------------------------------------- delimiters
@pytest.mark.parametrize("argument", ["think_open", "think_close"])
@pytest.mark.parametrize("value", ["", "  \n"])
@pytest.mark.parametrize("constructor", ["from_text", "from_parts"])
def test_empty_delimiters_are_refused_by_name(tokenizer, argument, value, constructor):
    # from_text with think_open="" used to loop forever, growing memory
    with pytest.raises(ValueError, match=argument):
        if constructor == "from_text":
            rc.Trace.from_text("Q <think> r </think> a", tokenizer, **{argument: value})
        else:
            rc.Trace.from_parts("Q", "r", "a", tokenizer, **{argument: value})


def test_empty_delimiter_is_refused_by_from_ids(tokenizer):
    ids = _trace(tokenizer).ids
    with pytest.raises(ValueError, match="think_close"):
        rc.Trace.from_ids(ids, tokenizer, think_close="")


# ----------------------------------------------------------------------------- context length
def _runs_of_the_model(model, trace):
    """Every public function that runs the model on a trace."""
    heads = [rc.Head(0, 0)]
    means = {rc.Head(0, 0): torch.zeros(int(model.cfg.d_head))}
    zero = HeadIntervention(heads, "zero", positions="answer")
    return {
        "profile": lambda: AttentionProfile.compute(model, trace),
        "answer_logprob": lambda: rc.metrics.answer_logprob(model, trace),
        "answer_kl": lambda: rc.metrics.answer_kl(model, trace, zero),
        "batch_logits": lambda: rc.metrics.batch_logits(model, trace),
        "effect": lambda: HeadIntervention(heads, "mean", positions="answer", means=means).effect(
            model, trace
        ),
        "measure_effect": lambda: rc.measure_effect(model, [trace], zero),
        "mean_head_outputs": lambda: rc.mean_head_outputs(model, trace, heads),
        "capture_head_outputs": lambda: rc.capture_head_outputs(model, trace, heads),
        "generate_answers": lambda: rc.generation.generate_answers(model, [trace]),
        "patch_heads": lambda: rc.patching.patch_heads(
            model, trace, trace, rc.patching.logit_diff_metric(1, 2)
        ),
    }


@pytest.mark.parametrize("model_name", ["qwen", "gpt2"])
@pytest.mark.parametrize(
    "call",
    [
        "profile",
        "answer_logprob",
        "answer_kl",
        "batch_logits",
        "effect",
        "measure_effect",
        "mean_head_outputs",
        "capture_head_outputs",
        "generate_answers",
        "patch_heads",
    ],
)
def test_every_model_run_refuses_a_trace_longer_than_the_context(request, model_name, call):
    # a rotary model (512 positions) used to run past its context and return numbers;
    # GPT-2 died with a raw IndexError
    model = request.getfixturevalue(model_name)
    n_ctx = int(model.cfg.n_ctx)
    trace = _long_trace(model.tokenizer, n_ctx + 40, metadata={"id": "test/algebra/7.json"})
    with pytest.raises(rc.ContextLengthError) as caught:
        _runs_of_the_model(model, trace)[call]()
    message = str(caught.value)
    assert f"{len(trace)} tokens" in message and str(n_ctx) in message
    assert "test/algebra/7.json" in message and "fit_to_context" in message


def test_the_message_names_which_trace_of_many(gpt2):
    short = _trace(gpt2.tokenizer)
    long = _long_trace(gpt2.tokenizer, int(gpt2.cfg.n_ctx) + 5)
    with pytest.raises(rc.ContextLengthError, match="trace 2 "):
        rc.metrics.answer_logprob(gpt2, [short, short, long])


def test_generation_counts_the_new_tokens_against_the_context(gpt2):
    n_ctx = int(gpt2.cfg.n_ctx)
    trace = _trace(gpt2.tokenizer, reasoning=" Then 12 + 30 = 42." * 200)
    tail = trace.ids[trace["think_close"].start :]
    trace = rc.Trace.from_ids(trace.ids[: n_ctx - 80] + tail, gpt2.tokenizer)
    assert trace["answer"].start + 32 <= n_ctx < trace["answer"].start + 200
    rc.generation.generate_answers(gpt2, [trace], max_new_tokens=2)
    with pytest.raises(rc.ContextLengthError, match="max_new_tokens"):
        rc.generation.generate_answers(gpt2, [trace], max_new_tokens=200)


# ----------------------------------------------------------------------------- tokenizers
def test_a_trace_records_its_tokenizer_and_keeps_it_through_to_dict(tokenizer, split_tokenizer):
    trace = _trace(tokenizer)
    assert trace.tokenizer == rc.trace.tokenizer_fingerprint(tokenizer)
    assert trace.tokenizer.vocab_size == len(tokenizer.get_vocab())
    again = rc.Trace.from_dict(trace.to_dict())
    assert again.tokenizer == trace.tokenizer
    other = rc.trace.tokenizer_fingerprint(split_tokenizer)
    assert not trace.tokenizer.matches(other)


def test_a_trace_from_another_tokenizer_is_refused_with_both_names(gpt2, split_tokenizer):
    foreign = _trace(split_tokenizer)
    assert max(foreign.ids) < gpt2.cfg.d_vocab  # the ids alone would run and give numbers
    for run in (
        lambda: rc.metrics.answer_logprob(gpt2, foreign),
        lambda: AttentionProfile.compute(gpt2, foreign),
        lambda: rc.probe_pair(
            foreign, foreign, gpt2.tokenizer, clean_answer="4", corrupted_answer="5"
        ),
    ):
        with pytest.raises(rc.TokenizerMismatchError) as caught:
            run()
        message = str(caught.value)
        assert str(foreign.tokenizer) in message
        assert str(rc.trace.tokenizer_fingerprint(gpt2.tokenizer)) in message


def test_ids_outside_the_vocabulary_are_a_trace_format_error(tokenizer):
    ids = list(_trace(tokenizer).ids)
    for bad in (len(tokenizer) + 5, -1):
        with pytest.raises(rc.TraceFormatError, match="outside the tokenizer's vocabulary"):
            rc.Trace.from_ids([*ids[:-1], bad], tokenizer)


def test_a_slow_tokenizer_is_refused_with_the_fix(tokenizer):
    class Slow:
        is_fast = False

    for build in (
        lambda: rc.Trace.from_parts("Q", "r", "a", Slow()),
        lambda: rc.Trace.from_text("Q <think> r </think> a", Slow()),
    ):
        with pytest.raises(TypeError, match="use_fast=True"):
            build()


# ----------------------------------------------------------------------------- rankings
def test_rank_heads_refuses_empty_and_all_nan_data():
    with pytest.raises(ValueError, match="zero traces"):
        rc.rank_heads(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="every value is NaN"):
        rc.rank_heads(np.full((4, 2, 3), np.nan), k=2)
    with pytest.raises(ValueError, match="every value is NaN"):
        rc.rank_heads(np.full((4, 2, 3), np.nan), k=2, method="frequency")
    with pytest.raises(ValueError, match="zero traces"):
        rc.rank_stability(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="no profiles"):
        rc.rank_heads([])


def test_nan_traces_are_left_out_by_the_documented_rule():
    rng = np.random.default_rng(1)
    values = rng.uniform(size=(6, 2, 3))
    with_nan = np.concatenate([values, np.full((2, 2, 3), np.nan)])
    with pytest.warns(RuntimeWarning, match="2 of 8 traces have no value"):
        ranking = rc.rank_heads(with_nan, k=3)
    assert ranking == rc.rank_heads(values, k=3)
    # a head NaN in some traces is scored on the others
    partial = values.copy()
    partial[:2, 1, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="1 heads are NaN in some traces"):
        ranking = rc.rank_heads(partial, k=6)
    expected = values[2:, 1, 2].mean()
    assert ranking.scores[list(ranking.heads).index(rc.Head(1, 2))] == pytest.approx(expected)


def test_query_and_key_are_refused_for_arrays():
    with pytest.raises(ValueError, match="an array of scores has none"):
        rc.rank_heads(np.zeros((2, 2, 2)), query="answer", key="prompt", k=1)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda tok: _trace_text(tok, convention="R2A-typo"), "convention"),
        (lambda tok: _trace(tok).partition("sentence"), "by"),
        (lambda tok: rc.rank_heads(np.ones((1, 2, 2)), k=1, method="meen"), "method"),
        (lambda tok: rc.HeadIntervention([(0, 0)], "zeros"), "action"),
    ],
)
def test_option_typos_are_refused_with_a_suggestion(tokenizer, call, name):
    with pytest.raises(ValueError, match=f"{name} must be one of .*did you mean"):
        call(tokenizer)


def _trace_text(tokenizer, **kw):
    return rc.Trace.from_text("Q <think> r </think> a", tokenizer, **kw)


def test_profile_statistic_typos_are_refused(gpt2, tokenizer):
    with pytest.raises(ValueError, match="statistics must be one of"):
        AttentionProfile.compute(gpt2, _trace(tokenizer), statistics=("mass", "entropie"))
    profiles = AttentionProfile.compute(gpt2, [_trace(tokenizer)])
    with pytest.raises(ValueError, match="statistic must be one of"):
        profiles.values("answer", "reasoning", statistic="masses")


def test_arguments_an_action_ignores_are_refused():
    with pytest.raises(ValueError, match="does not use positions, scale"):
        rc.HeadIntervention([(0, 0)], "knockout", positions=[0], scale=5.0)
    with pytest.raises(ValueError, match="does not use scale"):
        rc.HeadIntervention([(0, 0)], "zero", scale=2.0)
    with pytest.raises(ValueError, match="does not use query"):
        rc.HeadIntervention([(0, 0)], "zero", query="answer")
    with pytest.raises(ValueError, match="needs scale="):
        rc.HeadIntervention([(0, 0)], "scale")
    assert rc.HeadIntervention([(0, 0)], "scale", scale=0.5).scale == 0.5


# ----------------------------------------------------------------------------- wrong inputs
def test_wrong_inputs_get_messages_with_the_fix(gpt2, tokenizer):
    trace = _trace(tokenizer)
    iv = rc.HeadIntervention([(0, 0)], "zero", positions="answer")
    with pytest.raises(ValueError, match="traces is empty"):
        iv.effect(gpt2, [])
    with pytest.raises(TypeError, match=r"Trace.from_text"):
        AttentionProfile.compute(gpt2, "Q <think> r </think> a")
    with pytest.raises(TypeError, match=r"traces\[1\] is a .*Trace.from_ids"):
        AttentionProfile.compute(gpt2, [trace, trace.tokens])
    with pytest.raises(TypeError, match=r"rc\.load_model"):
        rc.metrics.answer_logprob(gpt2.original_model, trace)
    with pytest.raises(TypeError, match="model comes first"):
        rc.metrics.answer_logprob(trace, gpt2)


def test_one_trace_is_accepted_wherever_traces_are(gpt2, tokenizer):
    trace = _trace(tokenizer)
    iv = rc.HeadIntervention([(0, 0)], "zero", positions="answer")
    effect = iv.effect(gpt2, trace)  # used to fail: 'Segment' object is not subscriptable
    assert effect.n == 1
    assert rc.metrics.answer_logprob(gpt2, trace).shape == (1,)
    assert rc.capture_head_outputs(gpt2, trace, ["L0H0"])[rc.Head(0, 0)].shape[0] == 1
    assert len(rc.generation.generate_answers(gpt2, trace, max_new_tokens=1)) == 1


# ----------------------------------------------------------------------------- pairing by id
def _profiles_with_ids(ids, values):
    out = []
    for pid, value in zip(ids, values):
        masses = np.full((1, 2, 2, 2), 0.5)
        masses[:, :, 0, 1] = value
        masses[:, :, 0, 0] = 1 - value
        out.append(
            AttentionProfile(
                parts=("answer", "reasoning"),
                layers=(0,),
                heads=(0, 1),
                masses=masses,
                per_token_masses=None,
                entropies=None,
                ginis=None,
                token_counts=np.array([3, 5]),
                metadata={"id": pid},
            )
        )
    return rc.ProfileSet(out)


def test_contrast_heads_pairs_by_problem_id_not_by_position():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.4, size=(12, 2))
    ids = [f"p{i}" for i in range(12)]
    shift = 0.1 + rng.normal(0, 0.01, size=(12, 2))
    with_r = _profiles_with_ids(ids, base + shift)
    order = rng.permutation(12)
    without = _profiles_with_ids([ids[i] for i in order], base[order])
    same_order = rc.contrast_heads(with_r, _profiles_with_ids(ids, base))
    shuffled = rc.contrast_heads(with_r, without)
    cols = ["layer", "head", "diff", "ci_low", "ci_high", "p", "p_holm"]
    assert np.allclose(same_order[cols].to_numpy(), shuffled[cols].to_numpy())
    # paired by id, the differences vary by 0.01 around 0.1: a narrow interval around it.
    # Mispaired, they would vary by the spread of `base` (0.06) and the interval be wide.
    assert (shuffled.ci_high - shuffled.ci_low < 0.03).all()
    unpaired = rc.contrast_heads(with_r, without, paired=False)
    assert (unpaired.ci_high - unpaired.ci_low > 0.05).all()


def test_contrast_heads_refuses_sets_of_different_problems():
    with_r = _profiles_with_ids(["a", "b", "c"], [0.5, 0.5, 0.5])
    without = _profiles_with_ids(["a", "b", "d"], [0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match="do not hold the same problems"):
        rc.contrast_heads(with_r, without)
    twice = _profiles_with_ids(["a", "a", "b"], [0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match="repeated problem ids"):
        rc.contrast_heads(twice, twice)


# ----------------------------------------------------------------------------- statistics
def test_an_accuracy_effect_with_nothing_flipped_is_not_a_point(gpt2, tokenizer):
    traces = [_trace(tokenizer, answer=f" It is {i}.") for i in range(60)]

    def always_right(model, traces, intervention=None):
        return np.ones(len(traces))

    iv = rc.HeadIntervention([(0, 0)], "zero", positions="answer")
    effect = rc.measure_effect(gpt2, traces, iv, always_right)
    low, high = effect.ci
    assert effect.mean_diff == 0 and low < -0.01 and high > 0.01  # used to be [0, 0]
    assert effect.test == "exact mcnemar" and effect.p_value == 1.0
    assert "95% CI" in str(effect)


def test_contrast_heads_on_null_data_flags_almost_no_head():
    # 100 problems × 336 heads with no difference: marginal 95% intervals exclude 0 for ~5%
    # of heads (18 measured before); adjusted p and simultaneous intervals for ~none
    rng = np.random.default_rng(7)
    with_r = rng.normal(0.3, 0.05, size=(100, 28, 12))
    without = rng.normal(0.3, 0.05, size=(100, 28, 12))
    table = rc.contrast_heads(with_r, without, paired=True, n_resamples=999)
    marginal = int(((table.ci_low > 0) | (table.ci_high < 0)).sum())
    assert 5 <= marginal <= 35
    assert int((table.p_holm < 0.05).sum()) <= 1
    assert int((table.p_fdr < 0.05).sum()) <= 2
    assert int(((table.sim_low > 0) | (table.sim_high < 0)).sum()) <= 1
