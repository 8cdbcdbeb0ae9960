import numpy as np
import pytest
import torch
from transformer_lens.head_detector import detect_head

import reasoning_circuits as rc
from reasoning_circuits import AttentionProfile, Head, Trace, rank_heads

PLANTED = [Head(2, 5), Head(7, 0), Head(11, 11)]


def traces_for(tokenizer, n=4):
    return [
        Trace.from_parts(
            f"Question {i}: what is {i} + 3? ",
            f"\nWe add {i} and 3. " + "Let me check. " * i + f"So it is {i + 3}.\n",
            f" The answer is {i + 3}.",
            tokenizer,
            append_eos=True,
        )
        for i in range(n)
    ]


def test_head_value_type():
    assert str(Head(5, 1)) == "L5H1"
    assert sorted([Head(2, 0), Head(1, 3)]) == [Head(1, 3), Head(2, 0)]
    assert rc.heads.as_heads([(1, 2), Head(0, 0)]) == [Head(1, 2), Head(0, 0)]
    with pytest.raises(ValueError):
        Head(-1, 0)


@pytest.mark.parametrize("method", ["mean", "frequency"])
def test_planted_heads_are_exactly_the_top_k(gpt2_small, method):
    traces = traces_for(gpt2_small.tokenizer)
    with rc.testing.planted_attention(gpt2_small, PLANTED):
        profiles = AttentionProfile.compute(gpt2_small, traces, batch_size=2)
    a2r = profiles.values("answer", "reasoning")
    for head in PLANTED:
        np.testing.assert_allclose(a2r[:, head.layer, head.head], 1.0, atol=1e-6)
    ranking = rank_heads(profiles, k=3, method=method)
    assert set(ranking) == set(PLANTED)
    # after the block the model is unplanted again
    plain = AttentionProfile.compute(gpt2_small, traces[0])
    assert plain.mass("answer", "reasoning")[2, 5] < 0.9


def test_planted_head_changes_downstream_logits(gpt2):
    trace = traces_for(gpt2.tokenizer, 1)[0]
    base = gpt2(trace.tokens)
    with rc.testing.planted_attention(gpt2, [Head(0, 1)]):
        planted = gpt2(trace.tokens)
    answer = trace["answer"].slice
    assert (planted[0, answer] - base[0, answer]).abs().max() > 1e-3
    before = trace["think_close"].start
    torch.testing.assert_close(planted[0, :before], base[0, :before])


def test_rank_heads_on_plain_arrays_and_ties():
    values = np.zeros((3, 2, 3))
    values[:, 1, 2] = 0.9
    values[:, 0, 1] = 0.5
    values[:, 1, 0] = 0.5  # tie with (0, 1): lower layer first
    ranking = rank_heads(values, k=3)
    assert list(ranking) == [Head(1, 2), Head(0, 1), Head(1, 0)]
    assert ranking.scores == pytest.approx((0.9, 0.5, 0.5))
    assert list(ranking.to_frame()["rank"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="k must be in"):
        rank_heads(values, k=7)


def test_frequency_counts_per_trace_top_k():
    values = np.zeros((4, 1, 3))
    values[:3, 0, 0] = 1.0  # top-1 in 3 traces
    values[3, 0, 2] = 100.0  # top-1 in one trace, but the largest mean
    assert list(rank_heads(values, k=1, method="mean")) == [Head(0, 2)]
    ranking = rank_heads(values, k=1, method="frequency")
    assert list(ranking) == [Head(0, 0)] and ranking.scores == (3.0,)


def test_stability_and_contrast():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 0.3, size=(20, 3, 4))
    values[:, 2, 1] += 0.6
    stability = rc.rank_stability(values, k=1, n_resamples=200)
    top = stability.iloc[0]
    assert (top.layer, top["head"], top.share) == (2, 1, 1.0)
    assert stability.share.sum() == pytest.approx(1.0)
    without = values + rng.normal(0, 0.02, size=values.shape)
    without[:, 2, 1] -= 0.6
    contrast = rc.contrast_heads(values, without, paired=True, n_resamples=999)
    first = contrast.iloc[0]
    assert (first.layer, first["head"]) == (2, 1)
    assert first.ci_low < 0.6 < first.ci_high and first.p_holm < 1e-6
    assert (contrast.ci_low <= contrast["diff"] + 1e-12).all()
    assert (contrast.sim_low <= contrast.ci_low + 1e-12).all()
    assert (contrast.iloc[1:].p_holm > 0.05).all()  # the other 11 heads are null


def test_induction_score_of_planted_induction_head(gpt2):
    seq_len = 20

    def induction_pattern(ids):
        batch, n = ids.shape
        target = torch.full((batch, n, n), float("nan"))
        for q in range(n - seq_len, n):
            target[:, q] = 0.0
            target[:, q, q - seq_len + 1] = 1.0
        return target

    with rc.testing.planted_pattern(gpt2, [Head(1, 2)], induction_pattern):
        scores = rc.induction_scores(gpt2, seq_len=seq_len, n_sequences=2)
    assert scores.shape == (2, 4)
    assert scores[1, 2] == pytest.approx(1.0)
    assert np.argmax(scores) == 1 * 4 + 2


def test_previous_token_score_agrees_with_transformer_lens_detector(gpt2):
    # TL's "mul" measure over a sequence of T tokens is (1/T) Σ_q A[q, q-1]; ours leaves out
    # the first row, which has no previous token: ours = TL * T / (T - 1).
    text = "one two three one two three one two three"
    tokens = gpt2.to_tokens(text)
    ours = rc.heads._diagonal_scores(gpt2, tokens, 1, 1, batch_size=2, progress=False)
    theirs = detect_head(gpt2, text, "previous_token_head").numpy()
    n = tokens.shape[1]
    np.testing.assert_allclose(ours, theirs * n / (n - 1), atol=1e-4)
