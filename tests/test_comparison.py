"""Cross-model comparison: problems are the units, confounds are reported and adjusted for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from reasoning_circuits.comparison import ModelComparison, compare_models, problem_means


def sentences(rng, problems, shift=0.0, per_problem=(3, 12), length=None):
    """Rows of sentences: problem effect + noise; ``length`` makes entropy follow length."""
    rows = []
    for p in problems:
        base = rng.normal(0, 1)
        n_tokens = rng.uniform(50, 150) + (length or 0.0)
        for _ in range(rng.integers(*per_problem)):
            entropy = base + shift + rng.normal(0, 0.3)
            if length is not None:
                entropy = 0.02 * n_tokens + rng.normal(0, 0.3)
            rows.append({"problem_id": p, "entropy": entropy, "n_tokens": n_tokens})
    return pd.DataFrame(rows)


def test_independent_design_is_welch_on_problem_means():
    rng = np.random.default_rng(0)
    a = sentences(rng, [f"a{i}" for i in range(12)], shift=0.8)
    b = sentences(rng, [f"b{i}" for i in range(15)])
    result = compare_models(a, b, metrics=["entropy"], names=("qwen", "r1"))
    assert result.design == "independent"
    ma = a.groupby("problem_id")["entropy"].mean().to_numpy()
    mb = b.groupby("problem_id")["entropy"].mean().to_numpy()
    row = result.to_frame().iloc[0]
    assert row["estimate"] == pytest.approx(ma.mean() - mb.mean())
    welch = scipy.stats.ttest_ind(ma, mb, equal_var=False)
    assert row["test"] == "welch t" or "welch" in row["test"].lower()
    assert row["p"] == pytest.approx(welch.pvalue, rel=1e-6)
    assert row["second_p"] == pytest.approx(scipy.stats.mannwhitneyu(ma, mb).pvalue, rel=1e-6)
    assert (row["n_a"], row["n_b"]) == (12, 15)
    assert row["effect_low"] < row["effect_size"] < row["effect_high"]


def test_copies_of_a_problems_sentences_change_nothing():
    """Pseudo-replication guard: repeating rows within a problem leaves the result unchanged."""
    rng = np.random.default_rng(1)
    a = sentences(rng, [f"a{i}" for i in range(8)], shift=0.5)
    b = sentences(rng, [f"b{i}" for i in range(8)])
    once = compare_models(a, b, metrics=["entropy"]).to_frame()
    tenfold = compare_models(pd.concat([a] * 10), b, metrics=["entropy"]).to_frame()
    for column in ("estimate", "low", "high", "p", "n_a"):
        assert tenfold.loc[0, column] == pytest.approx(once.loc[0, column])
    # pooling sentences as if independent makes the same data "significant": what this avoids
    pooled = scipy.stats.ttest_ind(pd.concat([a] * 10)["entropy"], b["entropy"]).pvalue
    assert pooled < 0.05 < once.loc[0, "p"]


def test_same_problems_are_paired():
    rng = np.random.default_rng(2)
    ids = [f"p{i}" for i in range(10)]
    a = sentences(rng, ids, shift=0.4)
    b = sentences(rng, ids)
    result = compare_models(a, b, metrics=["entropy"])
    assert result.design == "paired"
    ma = a.groupby("problem_id")["entropy"].mean()
    mb = b.groupby("problem_id")["entropy"].mean().loc[ma.index]
    assert result.table.loc[0, "p"] == pytest.approx(scipy.stats.ttest_rel(ma, mb).pvalue)
    assert result.table.loc[0, "estimate"] == pytest.approx((ma - mb).mean())
    with pytest.raises(ValueError, match="design='paired'"):
        compare_models(a, b[b["problem_id"] != "p3"], metrics=["entropy"])
    partial = compare_models(a, b[b["problem_id"] != "p3"], metrics=["entropy"], design="paired")
    assert partial.table.loc[0, "n_a"] == 9


def test_a_length_confound_is_reported_and_adjusted_away():
    rng = np.random.default_rng(3)
    a = sentences(rng, [f"a{i}" for i in range(30)], length=60.0)  # longer traces
    b = sentences(rng, [f"b{i}" for i in range(30)], length=0.0)
    result = compare_models(a, b, metrics=["entropy"], confounds=["n_tokens"])
    table = result.to_frame().set_index("quantity")
    raw, confound = table.loc["entropy"], table.loc["n_tokens"]
    assert raw["low"] > 0  # a "difference" in entropy ...
    assert confound["kind"] == "confound" and confound["low"] > 40  # ... with longer traces
    assert raw["adjusted_low"] < 0 < raw["adjusted_high"]  # ... that length explains
    assert np.isnan(confound["p_holm"])


def test_holm_over_metrics_and_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    a = sentences(rng, [f"a{i}" for i in range(10)], shift=1.0).assign(other=lambda f: f.entropy)
    b = sentences(rng, [f"b{i}" for i in range(10)]).assign(other=lambda f: -f.entropy)
    result = compare_models(a, b, metrics=["entropy", "other"], names=("x", "y"))
    p = result.table["p"].to_numpy()
    order = np.argsort(p)
    want = np.maximum.accumulate(np.minimum(1, p[order] * (len(p) - np.arange(len(p)))))
    assert np.allclose(result.table["p_holm"].to_numpy()[order], want)
    path = result.save(tmp_path / "cmp")
    loaded = ModelComparison.load(path)
    pd.testing.assert_frame_equal(loaded.table, result.table, check_dtype=False)
    assert loaded.names == ("x", "y") and "x - y" in repr(loaded)
    fig = result.plot()
    assert len(fig.axes) == 2


def test_refusals():
    frame = pd.DataFrame({"problem_id": ["a", "a", "b"], "entropy": [0.1, 0.2, 0.3]})
    with pytest.raises(KeyError, match="problem="):
        compare_models(frame, frame, metrics=["entropy"], problem="item")
    with pytest.raises(KeyError, match="no column"):
        compare_models(frame, frame, metrics=["focus"])
    with pytest.raises(ValueError, match="both a metric and a confound"):
        compare_models(frame, frame, metrics=["entropy"], confounds=["entropy"])
    with pytest.raises(ValueError, match="did you mean 'paired'"):
        compare_models(frame, frame, metrics=["entropy"], design="pared")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one metric"):
        compare_models(frame, frame, metrics=[])
    with pytest.raises(ValueError, match="infinity"):
        problem_means(frame.assign(entropy=np.inf), ["entropy"], "problem_id")


def test_a_quantity_without_spread_gets_its_difference_and_no_interval():
    rows = [{"problem_id": f"p{i}", "entropy": float(i), "n_tokens": 10.0} for i in range(6)]
    a = pd.DataFrame(rows)
    b = a.assign(entropy=a.entropy - 0.5 + np.linspace(0, 0.1, 6), n_tokens=8.0)
    result = compare_models(a, b, metrics=["entropy"], confounds=["n_tokens"])
    printed = repr(result).splitlines()
    assert "nan" not in printed[2] and "+2 (no spread: no interval, no test)" in printed[2]
    assert "p=" in printed[1]  # entropy has spread: interval and test
    table = result.to_frame()
    confound = table.set_index("quantity").loc["n_tokens"]
    assert confound["estimate"] == 2.0 and np.isnan(confound["low"]) and np.isnan(confound["p"])
    assert confound["test"] == "none (no spread)"
    entropy = table.set_index("quantity").loc["entropy"]
    assert np.isfinite(entropy["p"])
    # a constant length shift cannot be told apart from the model difference itself
    assert np.isnan(entropy["adjusted"])
    # a confound equal in both models explains nothing: adjusting leaves the difference
    same = compare_models(a, b.assign(n_tokens=10.0), metrics=["entropy"], confounds=["n_tokens"])
    row = same.to_frame().iloc[0]
    assert row["adjusted"] == pytest.approx(row["estimate"])
