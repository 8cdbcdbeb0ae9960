"""One input convention: batching changes nothing, compact reprs, heads by name."""

from __future__ import annotations

import numpy as np
import pytest

import reasoning_circuits as rc


@pytest.fixture(scope="module")
def five(tokenizer):
    answers = [" The answer is 4.", " 4.", " So it is 4 apples.", " Four.", " The answer is 44."]
    return [
        rc.Trace.from_parts(f"Q{i}: 2+2?", "\n2+2=4." * (i + 1), a, tokenizer, metadata={"id": i})
        for i, a in enumerate(answers)
    ]


def test_batch_size_changes_no_number(gpt2, five):
    iv = rc.HeadIntervention([(1, 0)], "zero", positions="answer")
    one = rc.metrics.answer_logprob(gpt2, five, iv, batch_size=1)
    three = rc.metrics.answer_logprob(gpt2, five, iv, batch_size=3)
    assert np.allclose(one, three, atol=1e-4)
    kl1 = rc.metrics.answer_kl(gpt2, five, iv, batch_size=1)
    kl2 = rc.metrics.answer_kl(gpt2, five, iv, batch_size=2)
    assert np.allclose(kl1, kl2, atol=1e-5)
    e1 = iv.effect(gpt2, five, batch_size=1)
    e5 = iv.effect(gpt2, five, batch_size=5)
    assert np.allclose(e1.diff, e5.diff, atol=1e-4)
    c1 = rc.capture_head_outputs(gpt2, five, ["L1H0"], batch_size=1)[rc.Head(1, 0)]
    c2 = rc.capture_head_outputs(gpt2, five, ["L1H0"], batch_size=2)[rc.Head(1, 0)]
    assert c1.shape == (5, max(map(len, five)), gpt2.cfg.d_head)
    assert np.allclose(c1, c2, atol=1e-5)
    # padding stays zero
    assert float(c1[0, len(five[0]) :].abs().sum()) == 0.0


def test_batch_logits_in_batches_equals_one_batch(gpt2, five):
    rows = [list(range(t["answer"].start - 1, t["answer"].stop - 1)) for t in five]
    whole = rc.metrics.batch_logits(gpt2, five, rows=rows)
    parts = rc.metrics.batch_logits(gpt2, five, rows=rows, batch_size=2)
    assert np.allclose(whole, parts, atol=1e-4)


def test_batch_size_must_be_positive(gpt2, five):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        rc.metrics.answer_logprob(gpt2, five, batch_size=0)


def test_head_names_parse():
    assert rc.Head.parse("L3H4") == rc.Head(3, 4)
    assert rc.Head.parse(" l12h0 ") == rc.Head(12, 0)
    assert str(rc.Head.parse(str(rc.Head(7, 11)))) == "L7H11"
    assert rc.heads.as_heads(["L0H1", (2, 3), rc.Head(1, 1)]) == [
        rc.Head(0, 1),
        rc.Head(2, 3),
        rc.Head(1, 1),
    ]
    for bad in ("L3", "H4L3", "layer 3 head 4", "L-1H2"):
        with pytest.raises(ValueError, match="write it like 'L3H4'"):
            rc.Head.parse(bad)


def test_head_ranking_round_trips(tmp_path):
    ranking = rc.rank_heads(np.random.default_rng(3).uniform(size=(4, 3, 5)), k=6)
    again = rc.HeadRanking.load(ranking.save(tmp_path / "ranking"))
    assert again == ranking


def test_reprs_are_compact(gpt2, five):
    profiles = rc.AttentionProfile.compute(gpt2, five, by="sentences")
    pair = rc.align_pair(five[0], five[4])
    sweep = rc.patching.patch_heads(gpt2, pair, None, rc.patching.logit_diff_metric(5, 6))
    ranking = rc.rank_heads(rc.AttentionProfile.compute(gpt2, five), k=8)
    for value in (profiles[4], profiles, pair, sweep, ranking):
        text = repr(value)
        assert len(text) < 300 and "array" not in text and "\n" not in text, text
    assert "id 4" in repr(profiles[4]) and "… 3 more" in repr(ranking)


def test_head_type_scores_do_not_depend_on_the_batch_size(gpt2):
    whole = rc.induction_scores(gpt2, seq_len=10, n_sequences=5, batch_size=5)
    parts = rc.induction_scores(gpt2, seq_len=10, n_sequences=5, batch_size=2)
    assert np.allclose(whole, parts, atol=1e-6)
    prev = rc.previous_token_scores(gpt2, seq_len=10, n_sequences=5, batch_size=1)
    assert np.allclose(prev, rc.previous_token_scores(gpt2, seq_len=10, n_sequences=5), atol=1e-6)
