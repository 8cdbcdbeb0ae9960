"""Receiver heads and per-sentence attention: planted heads, brute force, hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits import Trace
from reasoning_circuits.receivers import (
    SentenceAttention,
    _study_numbers,
    receiver_heads,
    receiver_scores,
    sentence_attention,
    study_sentence_statistics,
    vertical_scores,
)

REASONING = [
    "\nFirst, 3+4=7.",
    " Then 7*2=14.",
    " Okay.",
    " Next, 14-5=9.",
    " Let me check.",
    " So 9+1=10.",
    " Done.\n",
]


def make_trace(tokenizer, reasoning=REASONING, answer=" It is 10."):
    return Trace.from_parts("Q: compute. ", "".join(reasoning), answer, tokenizer, append_eos=True)


@pytest.mark.parametrize("make", [rc.testing.tiny_gpt2, rc.testing.tiny_qwen2])
def test_the_fast_path_gives_the_sentence_statistics_of_the_patterns(make):
    """O(T) sentence statistics: method="fast" (no [T × T] pattern) equals the pattern path,
    matrix, entropy, Gini and sink, on GPT-2 and on rotary grouped-query Qwen2, also batched
    with traces of different lengths."""
    model = make(seed=1)
    traces = [make_trace(model.tokenizer), make_trace(model.tokenizer, REASONING[:4], " 9.")]
    fast = sentence_attention(model, traces, gini=True, method="fast", batch_size=2)
    slow = sentence_attention(model, traces, gini=True, method="pattern", batch_size=1)
    for a, b in zip(fast, slow, strict=True):
        for name in ("matrix", "entropy", "gini", "sink"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5, rtol=0)
        assert a.matrix.shape[-1] == len(a.n_tokens)
    with pytest.raises(ValueError, match="method must be one of"):
        sentence_attention(model, traces, method="fastest")  # type: ignore[arg-type]


def test_matrix_entropy_and_sink_match_full_patterns(gpt2, tokenizer):
    trace = make_trace(tokenizer)
    (att,) = sentence_attention(gpt2, trace)
    assert att.n_sentences == len(trace.sentences) == len(REASONING)
    _, cache = gpt2.run_with_cache(trace.tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(gpt2.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double().numpy()
        for head in range(gpt2.cfg.n_heads):
            a = pattern[head]
            for i, si in enumerate(trace.sentences):
                for j, sj in enumerate(trace.sentences):
                    values = []
                    for q in si.positions:
                        seen = [k for k in sj.positions if k <= q]
                        if seen:
                            values.append(a[q, seen].sum() / len(seen))
                    want = np.mean(values) if values else 0.0
                    assert att.matrix[layer, head, i, j] == pytest.approx(want, abs=1e-5)
                rows = list(si.positions)
                sink = np.mean([a[q, 0] for q in rows])
                assert att.sink[layer, head, i] == pytest.approx(sink, abs=1e-5)
                ent = np.mean(
                    [-(a[q, : q + 1] * np.log(a[q, : q + 1])).sum() / math.log(q + 1) for q in rows]
                )
                assert att.entropy[layer, head, i] == pytest.approx(ent, abs=1e-5)


def _sentence_zero_pattern(trace: Trace):
    """Every row of sentences 1.. attends uniformly to the tokens of sentence 0."""
    s0 = trace.sentences[0]
    later = range(trace.sentences[1].start, trace.sentences[-1].stop)

    def pattern_fn(ids: torch.Tensor) -> torch.Tensor:
        batch, n = ids.shape
        target = torch.full((batch, n, n), float("nan"))
        for q in later:
            target[:, q] = 0.0
            target[:, q, s0.start : s0.stop] = 1.0 / len(s0)
        return target

    return pattern_fn


def test_planted_receiver_head_is_found_and_scores_its_sentence(gpt2, tokenizer):
    fillers = [" Okay.", " Good.", " Hmm.", " Right."]
    variants = [REASONING[: 5 + k] + fillers[:k] for k in range(3)]
    variants += [REASONING[:1] + REASONING[2 + k :] + fillers for k in range(3)]
    attentions = []
    for reasoning in variants:
        trace = make_trace(tokenizer, reasoning)
        with rc.testing.planted_pattern(gpt2, [(1, 2)], _sentence_zero_pattern(trace)):
            (att,) = sentence_attention(gpt2, trace)
        attentions.append(att)
        s0 = len(trace.sentences[0])
        vertical = vertical_scores(att, proximity_ignore=1)
        # hand: every later sentence pays 1/|s0| per token of sentence 0 and 0 elsewhere
        assert vertical[1, 2, 0] == pytest.approx(1 / s0, rel=1e-5)
        assert np.allclose(vertical[1, 2, 1:-1], 0.0, atol=1e-6)
        assert np.isnan(vertical[1, 2, -1])  # no sentence after the last one
        scores = receiver_scores(att, [rc.Head(1, 2)], proximity_ignore=1)
        assert int(np.nanargmax(scores)) == 0
    ranking = receiver_heads(attentions, proximity_ignore=1)
    assert ranking.top(1) == [rc.Head(1, 2)]
    # one spike among m - 1 zeros: excess kurtosis (m - 2) + 1/(m - 1) - 3 (biased estimator)
    for t, att in enumerate(attentions):
        m = att.n_sentences - 1
        spike = (m - 2) + 1 / (m - 1) - 3
        assert ranking.kurtosis[t, 1, 2] == pytest.approx(spike, rel=1e-6)
    best = ranking.to_frame().iloc[0]
    assert best["estimate"] == pytest.approx(ranking.kurtosis[:, 1, 2].mean())
    assert best["sim_low"] <= best["ci_low"] <= best["estimate"] <= best["ci_high"]


def test_vertical_scores_hand_computed():
    matrix = np.zeros((1, 1, 4, 4))
    matrix[0, 0] = np.tril(np.arange(1, 17, dtype=float).reshape(4, 4))
    att = SentenceAttention(
        layers=(0,),
        heads=(0,),
        matrix=matrix,
        entropy=np.zeros((1, 1, 4)),
        gini=None,
        sink=np.zeros((1, 1, 4)),
        n_tokens=np.ones(4),
    )
    m = matrix[0, 0]
    got = vertical_scores(att, proximity_ignore=2)[0, 0]
    assert got[0] == pytest.approx((m[2, 0] + m[3, 0]) / 2)
    assert got[1] == pytest.approx(m[3, 1])
    assert np.isnan(got[2]) and np.isnan(got[3])
    with pytest.raises(ValueError, match="proximity_ignore"):
        vertical_scores(att, proximity_ignore=0)


def test_study_numbers_match_their_closed_forms():
    for n in (1, 2, 16, 40):
        uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
        got = _study_numbers(uniform)
        ceiling = 0.0 if n == 1 else math.lgamma(n + 1) / (n * math.log(n))
        assert got["entropy"] == pytest.approx(ceiling, rel=1e-9)
        flat = uniform.ravel()
        gini = np.abs(flat[:, None] - flat[None, :]).sum() / (2 * flat.size * flat.sum())
        assert got["gini"] == pytest.approx(gini, rel=1e-9)
        assert got["sink"] == pytest.approx(np.mean(1 / np.arange(1, n + 1)))
    sink = np.zeros((8, 8))
    sink[:, 0] = 1.0
    assert _study_numbers(sink)["entropy"] == 0.0 and _study_numbers(sink)["sink"] == 1.0


def test_study_statistics_read_exact_token_prefixes(gpt2, tokenizer):
    trace = make_trace(tokenizer)
    frame = study_sentence_statistics(gpt2, trace, last_layers=2)
    assert list(frame["sentence"]) == list(range(len(trace.sentences)))
    bos = len(trace["bos"])
    start = trace["reasoning"].start
    assert list(frame["n"]) == [bos + s.stop - start for s in trace.sentences]
    # recompute one sentence by hand from a cached run on the same prefix
    s = trace.sentences[3]
    ids = list(trace.ids[:bos]) + list(trace.ids[start : s.stop])
    _, cache = gpt2.run_with_cache(torch.tensor([ids]))
    layers = range(gpt2.cfg.n_layers - 2, gpt2.cfg.n_layers)
    patterns = [cache[f"blocks.{layer}.attn.hook_pattern"][0].double() for layer in layers]
    mean = np.mean([p.numpy().mean(0) for p in patterns], axis=0)
    for key, value in _study_numbers(mean).items():
        assert frame.loc[3, key] == pytest.approx(value, rel=1e-5)
    with pytest.raises(ValueError, match="last_layers"):
        study_sentence_statistics(gpt2, trace, last_layers=0)


def test_refusals(gpt2, tokenizer):
    empty = Trace.from_parts("Q: x. ", "", " It is 1.", tokenizer, append_eos=True)
    with pytest.raises(ValueError, match="no reasoning sentences"):
        sentence_attention(gpt2, empty)
    trace = make_trace(tokenizer, REASONING[:3])
    (att,) = sentence_attention(gpt2, trace)
    with pytest.raises(ValueError, match="4 or more sentences"):
        receiver_heads([att, att])
    with pytest.raises(ValueError, match="at least one head"):
        receiver_scores(att, [])
    with pytest.raises(ValueError, match="was not measured"):
        receiver_scores(att, [rc.Head(9, 0)])
    (other,) = sentence_attention(gpt2, trace, layers=[0])
    with pytest.raises(ValueError, match="same layers"):
        receiver_heads([att, other])
