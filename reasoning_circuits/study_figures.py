"""The PTS study's summary figure for two models, redrawn with intervals that respect problems.

The study (spec ``pts.md`` §5) drew entropy histograms per model and correctness, box plots of
its verification score, bars of error-type counts and a cross-model summary ("accuracy" =
the share of anchors with Δ > 0), all without intervals and treating every anchor as an
independent sample although the anchors of one problem share a trace. :func:`plot_study_summary`
draws the same four views for two record frames (from
:func:`reasoning_circuits.anchor_records.read_study_records`, or any frame with the same
columns), each with an interval that counts **problems**, not sentences, wherever the
sentences of a problem are pooled:

1. **Attention entropy**: the distribution of sentence values (violin), the per-problem means
   (dots) and the mean of the problem means with its interval
   (:func:`~reasoning_circuits.stats.cluster_bootstrap_ci`, ``statistic="cluster_mean"``:
   each problem weighs the same). The entropy depends on the sequence length and the
   attention-sink share as much as on anything else (see :mod:`reasoning_circuits.receivers`);
   a difference here is not evidence about reasoning quality.
2. **Share of sentences with Δ > 0** (the study's "accuracy", which is not an accuracy):
   pooled over sentences, with a cluster bootstrap interval (``statistic="mean"``, problems
   resampled whole).
3. **Failure modes**: for every failure mode seen, the share of the model's sentences that
   carry it, with Wilson intervals (sentences as units: these ignore clustering, and most
   labels are heuristic, see :mod:`reasoning_circuits.categories`); counts are written above
   the bars.
4. **Verified arithmetic**: among sentences whose arithmetic was checked
   (``verification_ok`` not null), the share with no wrong claim, with a cluster bootstrap
   interval. This replaces the study's verification-score box plot: that score mixed the
   check with an attention heuristic (spec §8).

When a cluster interval cannot be had (fewer than two problems, or every problem has the same
share, e.g. all arithmetic right), panels 2 and 4 fall back to Wilson's interval over
sentences and say so under the bar. Cluster intervals of a share are clipped to [0, 1] (with
few problems the t interval can overshoot); an entropy mean without an interval is drawn as a bare
point, labelled "no CI". Every interval's method is written on the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reasoning_circuits import stats
from reasoning_circuits.categories import FAILURE_MODES
from reasoning_circuits.plotting import _pyplot

__all__ = ["plot_study_summary"]


def _share_interval(
    values: np.ndarray, clusters: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[stats.Interval | None, str]:
    """A pooled share of 0/1 ``values`` with an interval over problems (``clusters``).

    A cluster bootstrap when problems differ; when every problem has the same share of 0 or
    1, Wilson's interval over problems (each problem one unit); otherwise (one problem, or
    every problem at the same fraction) no interval. Sentences are never the units.
    Returns the interval (or None) and a short method label.
    """
    labels = np.unique(clusters)
    if len(labels) < 2:
        return None, "no interval (1 problem)"
    try:
        interval = stats.cluster_bootstrap_ci(
            values,
            clusters,
            statistic="mean",
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
    except stats.ZeroVarianceError:
        share = float(values.mean())
        if share in (0.0, 1.0):
            k = len(labels) if share == 1.0 else 0
            return stats.proportion_ci(k, len(labels), confidence=confidence), "Wilson (problems)"
        return None, "no interval (equal shares)"
    # a share lies in [0, 1]; a t-based cluster interval can overshoot at few problems
    clipped = stats.Interval(
        interval.estimate,
        max(interval.low, 0.0),
        min(interval.high, 1.0),
        interval.confidence,
        interval.method,
        interval.n,
        interval.dropped,
    )
    return clipped, f"cluster ({interval.n} problems)"


def _errorbar(ax: Any, x: float, interval: stats.Interval, label: str, **style: Any) -> None:
    ax.errorbar(
        x,
        interval.estimate,
        yerr=[[interval.estimate - interval.low], [interval.high - interval.estimate]],
        fmt="none",
        ecolor="black",
        capsize=4,
        label=label,
        **style,
    )


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame of {name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(
            f"the frame of {name} has no column(s) {missing}; read records with "
            "read_study_records, or pass problem=/entropy=/delta=/failure=/verified= the "
            "columns that hold them"
        )
    if frame.empty:
        raise ValueError(f"the frame of {name} has no rows")


def plot_study_summary(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    *,
    names: tuple[str, str] = ("A", "B"),
    problem: str = "problem",
    entropy: str = "attention_entropy",
    delta: str = "prob_delta",
    failure: str = "failure_mode",
    verified: str = "verification_ok",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    path: str | Path | None = None,
) -> Any:
    """The study's cross-model summary for two models, with problem-aware intervals.

    Args:
        frame_a, frame_b: one row per sentence record (e.g. :func:`read_study_records`).
        names: the two models' labels.
        problem: the column naming each row's problem (the cluster).
        entropy: per-sentence attention entropy (NaN rows left out).
        delta: per-sentence Δ = P(kept) − P(replaced) (NaN rows left out).
        failure: failure-mode labels (``None`` = no failure).
        verified: ``True``/``False``/``None``: arithmetic right, wrong, not checked.
        confidence, n_resamples, seed: of every interval (:mod:`reasoning_circuits.stats`).
        path: save the figure there (PNG, 120 dpi) when given.

    Returns:
        The matplotlib Figure with four panels (module docstring). Each interval is an
        errorbar labelled ``"<name> <quantity>"`` (``entropy``, ``positive``,
        ``failure:<mode>``, ``verified``).

    Raises:
        KeyError: a named column is missing. ValueError: a frame is empty, or ``names`` are
        not two different labels.
    """
    if len(names) != 2 or len(set(names)) != 2:
        raise ValueError(f"names must be two different labels, got {names!r}")
    columns = [problem, entropy, delta, failure, verified]
    frames = (frame_a, frame_b)
    for frame, name in zip(frames, names):
        _check_columns(frame, columns, name)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), layout="constrained")
    ax_entropy, ax_positive, ax_failure, ax_verified = axes
    rng = np.random.default_rng(seed)
    summary = []
    for x, (frame, name) in enumerate(zip(frames, names)):
        color = f"C{x}"
        clusters_all = frame[problem].astype(str).to_numpy()
        summary.append(f"{name}: {len(set(clusters_all))} problems, {len(frame)} sentences")

        # 1. entropy
        values = pd.to_numeric(frame[entropy], errors="coerce").astype(float).to_numpy()
        finite = np.isfinite(values)
        if finite.any():
            v, c = values[finite], clusters_all[finite]
            if v.size >= 2:
                parts = ax_entropy.violinplot(v, positions=[x], widths=0.7, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_alpha(0.3)
            means = pd.Series(v).groupby(c).mean()
            ax_entropy.scatter(
                x + rng.uniform(-0.08, 0.08, len(means)), means, s=14, color=color, zorder=3
            )
            try:
                interval = stats.cluster_bootstrap_ci(
                    v,
                    c,
                    statistic="cluster_mean",
                    confidence=confidence,
                    n_resamples=n_resamples,
                    seed=seed,
                )
                _errorbar(ax_entropy, x + 0.3, interval, f"{name} entropy")
                ax_entropy.plot(x + 0.3, interval.estimate, "D", color="black", ms=5)
                note = f"{interval.estimate:.3g}\n[{interval.low:.3g}, {interval.high:.3g}]"
            except (ValueError, stats.ZeroVarianceError):
                ax_entropy.plot(x + 0.3, float(means.mean()), "D", color="black", ms=5)
                note = f"{float(means.mean()):.3g}\nno CI"
            ax_entropy.annotate(
                note, (x + 0.36, float(means.mean())), fontsize=7, va="center", ha="left"
            )
        else:
            ax_entropy.text(x, 0.5, "no entropy", ha="center", transform=ax_entropy.transData)

        # 2. share of sentences with Δ > 0
        d = pd.to_numeric(frame[delta], errors="coerce").astype(float).to_numpy()
        ok = np.isfinite(d)
        if ok.any():
            positive = (d[ok] > 0).astype(float)
            share, method = _share_interval(
                positive, clusters_all[ok], confidence, n_resamples, seed
            )
            ax_positive.bar(x, float(positive.mean()), color=color, alpha=0.6, width=0.6)
            if share is not None:
                _errorbar(ax_positive, x, share, f"{name} positive")
            ax_positive.text(
                x,
                0.02,
                f"{int(positive.sum())}/{positive.size}\n{method}",
                ha="center",
                fontsize=7,
            )
        else:
            ax_positive.text(x, 0.5, "no Δ", ha="center")

        # 4. verified arithmetic
        checked = frame[verified].map(lambda v: None if pd.isna(v) else bool(v))
        mask = checked.notna().to_numpy()
        if mask.any():
            right = checked[mask].astype(float).to_numpy()
            share, method = _share_interval(
                right, clusters_all[mask], confidence, n_resamples, seed
            )
            ax_verified.bar(x, float(right.mean()), color=color, alpha=0.6, width=0.6)
            if share is not None:
                _errorbar(ax_verified, x, share, f"{name} verified")
            ax_verified.text(
                x, 0.02, f"{int(right.sum())}/{right.size}\n{method}", ha="center", fontsize=7
            )
        else:
            ax_verified.text(x, 0.5, "no checked\narithmetic", ha="center", fontsize=8)

    # 3. failure modes, grouped bars
    seen = {str(m) for f in frames for m in f[failure].dropna()}
    modes = [m for m in FAILURE_MODES if m in seen] + sorted(seen - set(FAILURE_MODES))
    width = 0.8 / 2
    handles = []
    for x, (frame, name) in enumerate(zip(frames, names)):
        labels = frame[failure].astype(object).where(frame[failure].notna(), None).to_numpy()
        problems_of = frame[problem].astype(str).to_numpy()
        n = len(frame)
        for j, mode in enumerate(modes):
            hits = np.array([label is not None and str(label) == mode for label in labels])
            k = int(hits.sum())
            # a share of sentences, with problems as the units of its interval
            share, _ = _share_interval(
                hits.astype(float), problems_of, confidence, n_resamples, seed
            )
            position = j + (x - 0.5) * width
            bars = ax_failure.bar(
                position, k / n, width=width, color=f"C{x}", alpha=0.6, label=name
            )
            if j == 0:
                handles.append(bars)
            if share is not None:
                _errorbar(ax_failure, position, share, f"{name} failure:{mode}")
            ax_failure.text(position, 0, f"{k}/{n}", ha="center", va="bottom", fontsize=6)
    if modes:
        ax_failure.set_xticks(range(len(modes)), [m.replace("_", "\n") for m in modes], fontsize=7)
        ax_failure.legend(handles=handles, fontsize=7, loc="upper right")
    else:
        ax_failure.text(0.5, 0.5, "no failure modes", ha="center", transform=ax_failure.transAxes)
        ax_failure.set_xticks([])

    level = f"{confidence:.0%}"
    for ax in (ax_entropy, ax_positive, ax_verified):
        ax.set_xticks([0, 1], list(names))
        ax.set_xlim(-0.6, 1.9)
    ax_entropy.set_title(
        f"attention entropy per sentence\n◆ mean of problem means, {level} cluster CI", fontsize=9
    )
    ax_entropy.set_ylabel(entropy)
    ax_positive.set_title(
        f"share of sentences with Δ > 0\n(the study's 'accuracy'), {level} CI", fontsize=9
    )
    ax_positive.set_ylim(0, 1.05)
    ax_failure.set_title(
        f"failure modes: share of sentences\n{level} cluster CI (problems as units)", fontsize=9
    )
    ax_failure.set_ylabel("share of sentences")
    ax_verified.set_title(
        f"checked arithmetic that is right\n(share of sentences with claims), {level} CI",
        fontsize=9,
    )
    ax_verified.set_ylim(0, 1.05)
    fig.suptitle("; ".join(summary), fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
