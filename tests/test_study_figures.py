"""The study-like summary figure: it draws its four panels and the intervals of rc.stats."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reasoning_circuits import stats
from reasoning_circuits.anchor_records import read_study_records
from reasoning_circuits.study_figures import plot_study_summary

pytest.importorskip("matplotlib")

FIXTURE = Path(__file__).parent / "fixtures" / "anchor_records_study.jsonl"
N_RESAMPLES = 499


def _frame(seed: int, n_problems: int, level: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_problems):
        base = level + rng.normal(0, 0.03)
        for _ in range(int(rng.integers(3, 8))):
            rows.append(
                {
                    "problem": f"m{seed}-p{p}",
                    "attention_entropy": base + rng.normal(0, 0.02),
                    "prob_delta": float(rng.choice([-0.4, 0.0, 0.2, 0.5, np.nan])),
                    "failure_mode": rng.choice([None, None, "logical_error", "missing_step"]),
                    "verification_ok": rng.choice([None, True, True, False]),
                }
            )
    return pd.DataFrame(rows)


def _intervals(fig) -> dict[str, tuple[float, float]]:
    """Label -> (low, high) of every errorbar drawn in the figure."""
    out = {}
    for ax in fig.axes:
        for container in ax.containers:
            label = container.get_label()
            if hasattr(container, "has_yerr") and container.has_yerr:
                (segment,) = container.lines[2][0].get_segments()
                out[label] = (float(segment[0][1]), float(segment[1][1]))
    return out


def _share(values, clusters):
    interval = stats.cluster_bootstrap_ci(
        np.asarray(values, dtype=float), np.asarray(clusters), n_resamples=N_RESAMPLES
    )
    return max(interval.low, 0.0), min(interval.high, 1.0)


@pytest.fixture(scope="module")
def frames():
    return _frame(1, 12, 0.3), _frame(2, 9, 0.55)


@pytest.fixture(scope="module")
def figure(frames):
    a, b = frames
    return plot_study_summary(a, b, names=("qwen", "ds"), n_resamples=N_RESAMPLES)


def test_four_panels_with_titles(figure):
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 4
    for word, title in zip(["entropy", "Δ > 0", "failure modes", "arithmetic"], titles):
        assert word in title
    assert "qwen: 12 problems" in figure._suptitle.get_text()


def test_entropy_intervals_are_the_cluster_means_interval(figure, frames):
    drawn = _intervals(figure)
    for name, frame in zip(("qwen", "ds"), frames):
        expected = stats.cluster_bootstrap_ci(
            frame["attention_entropy"].to_numpy(),
            frame["problem"].to_numpy(),
            statistic="cluster_mean",
            n_resamples=N_RESAMPLES,
        )
        # and that is the interval of the problem means, each problem weighing the same
        means = frame.groupby("problem")["attention_entropy"].mean().to_numpy()
        assert expected.estimate == pytest.approx(means.mean())
        assert drawn[f"{name} entropy"] == pytest.approx((expected.low, expected.high))


def test_share_intervals_are_cluster_bootstrap_intervals(figure, frames):
    drawn = _intervals(figure)
    for name, frame in zip(("qwen", "ds"), frames):
        rated = frame[frame["prob_delta"].notna()]
        assert drawn[f"{name} positive"] == pytest.approx(
            _share(rated["prob_delta"] > 0, rated["problem"])
        )
        checked = frame[frame["verification_ok"].notna()]
        assert drawn[f"{name} verified"] == pytest.approx(
            _share(checked["verification_ok"].astype(bool), checked["problem"])
        )


def test_failure_intervals_take_problems_as_units(figure, frames):
    drawn = _intervals(figure)
    for name, frame in zip(("qwen", "ds"), frames):
        for mode in ("logical_error", "missing_step"):
            hits = (frame["failure_mode"] == mode).to_numpy()
            expected = _share(hits, frame["problem"])
            assert drawn[f"{name} failure:{mode}"] == pytest.approx(expected)
    assert not any("computational" in label for label in drawn)  # only modes that occur


def test_without_a_cluster_interval_sentences_are_never_the_units(frames):
    a, _ = frames
    one_problem = a.assign(problem="only", verification_ok=True)
    fig = plot_study_summary(one_problem, a, n_resamples=N_RESAMPLES)
    drawn = _intervals(fig)
    assert "A positive" not in drawn and "A entropy" not in drawn  # one problem: no interval
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "no interval (1 problem)" in texts and "no CI" in texts
    # every problem all right: Wilson over problems (each problem one unit), not sentences
    fig = plot_study_summary(a.assign(verification_ok=True), a, n_resamples=N_RESAMPLES)
    n_problems = a["problem"].nunique()
    expected = stats.proportion_ci(n_problems, n_problems)
    assert _intervals(fig)["A verified"] == pytest.approx((expected.low, expected.high))
    assert n_problems < len(a)  # the sentence-level interval would have been narrower


def test_the_study_files_can_be_drawn(frames, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = read_study_records(FIXTURE)
    path = tmp_path / "summary.png"
    fig = plot_study_summary(study, frames[0], names=("study", "ours"), path=path)
    assert path.stat().st_size > 10_000
    drawn = _intervals(fig)
    # the study's entropy: NaN and -inf rows are left out, its silent 0.0 is kept
    assert drawn["study entropy"][0] < 0.2
    assert "study failure:computational_mistake" in drawn


def test_missing_columns_and_bad_names_are_refused(frames):
    a, b = frames
    with pytest.raises(KeyError, match="attention_entropy"):
        plot_study_summary(a.drop(columns="attention_entropy"), b)
    with pytest.raises(ValueError, match="two different labels"):
        plot_study_summary(a, b, names=("x", "x"))
    with pytest.raises(ValueError, match="no rows"):
        plot_study_summary(a.iloc[:0], b)
