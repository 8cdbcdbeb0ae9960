"""Opt-in tier: the real pretrained GPT-2, when it is in the local Hugging Face cache."""

import numpy as np
import pytest

import reasoning_circuits as rc

pytestmark = pytest.mark.pretrained


@pytest.fixture(scope="module")
def gpt2_pretrained():
    try:
        return rc.load_model("gpt2")
    except rc.ModelLoadError as err:
        pytest.skip(f"pretrained gpt2 is not in the local Hugging Face cache: {err}")


def test_known_induction_heads_rank_high(gpt2_pretrained):
    scores = rc.induction_scores(gpt2_pretrained, seq_len=50, n_sequences=8)
    top5 = {divmod(int(i), 12) for i in np.argsort(-scores.ravel())[:5]}
    assert {(5, 1), (5, 5), (6, 9)} <= top5


def test_quickstart_numbers_are_finite(gpt2_pretrained):
    tok = gpt2_pretrained.tokenizer
    traces = [
        rc.Trace.from_parts(
            f"What is {i} plus 2? ", f"\n{i} plus 2 is {i + 2}.\n", f" {i + 2}.", tok
        )
        for i in range(3)
    ]
    profiles = rc.AttentionProfile.compute(gpt2_pretrained, traces)
    assert np.isfinite(profiles.mean("answer", "reasoning")).all()
    assert len(rc.rank_heads(profiles, k=10)) == 10
