"""Comparing two model families on per-sentence measurements, problems as the unit.

A thought-anchor study yields many rows per problem (one per reasoning sentence: importance,
entropy, verification, ...). Sentences of one trace share a prefix and a problem, so they are
not independent samples: pooling them and running a t test counts one problem dozens of times
(the source study's cross-model t = −27.5 rested on 5 problems per model). Here every
quantity is first averaged **per problem** (each problem weighs the same), then the two models
are compared on those problem means:

* the same problems under both models (``design="paired"``, chosen by ``"auto"`` when the
  problem ids coincide): per-problem differences, :func:`reasoning_circuits.stats.paired_test`
  (interval of the mean difference, paired t, Wilcoxon);
* different problems (``design="independent"``, ``"auto"`` when no id is shared):
  :func:`reasoning_circuits.stats.two_sample` (interval of the difference, Welch's t,
  Mann–Whitney U, Hedges' g with its interval).

p-values are Holm-adjusted over the compared metrics (``p_holm``), since a study reports
several at once. A quantity with no spread (every paired difference equal, or both models
constant) gets its difference with a NaN interval and p-value: no interval follows from it.

Confounds: a difference in attention entropy between two models is also what a different
trace length or a stronger attention sink produce (see :mod:`reasoning_circuits.receivers`).
Pass those columns as ``confounds=``: each is compared the same way and reported beside the
metrics (``kind="confound"``), and every metric also gets a difference **adjusted** for them
(OLS on problem means with HC3 standard errors: the model indicator, or the paired
differences' intercept, with the confounds as covariates). Adjustment only removes what is
linear in the confounds; a large confound difference is a reason to doubt, not to correct.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from reasoning_circuits import stats
from reasoning_circuits._options import check_option
from reasoning_circuits._store import load_npz, save_npz

__all__ = ["Design", "ModelComparison", "compare_models", "problem_means"]

Design = Literal["auto", "paired", "independent"]
_KIND = "ModelComparison"
_NO_SPREAD = "none (no spread)"  # the test column of a quantity without spread


def problem_means(frame: pd.DataFrame, columns: Sequence[str], problem: str) -> pd.DataFrame:
    """The mean of each column per problem (NaN values left out), indexed by problem id, plus
    ``n_rows`` (rows per problem)."""
    missing = [c for c in (problem, *columns) if c not in frame.columns]
    if missing:
        raise KeyError(
            f"no column(s) {missing}; the frame has {list(frame.columns)}. Pass problem= the "
            "column naming each row's problem and metrics=/confounds= existing columns"
        )
    if frame.empty:
        raise ValueError("the frame has no rows")
    numeric = frame[list(columns)].apply(pd.to_numeric, errors="raise").astype(float)
    bad = [c for c in columns if np.isinf(numeric[c]).any()]
    if bad:
        raise ValueError(f"columns {bad} hold infinity; fix or drop those rows first")
    grouped = numeric.groupby(frame[problem].astype(str), sort=True)
    means = grouped.mean()
    means["n_rows"] = grouped.size()
    return means


@dataclass(frozen=True)
class ModelComparison:
    """Per-problem comparison of two models: one row per metric and confound.

    ``table`` columns: ``quantity``, ``kind`` (``"metric"``/``"confound"``), ``mean_a``,
    ``mean_b`` (means of the problem means), ``estimate``, ``low``, ``high`` (``a - b``),
    ``test``, ``p`` (primary test), ``p_holm`` (metrics only), ``second_test``,
    ``second_p``, ``effect_size``/``effect_low``/``effect_high`` (Hedges' g, independent
    design only), ``adjusted``/``adjusted_low``/``adjusted_high`` (metrics, with confounds),
    ``n_a``, ``n_b`` (problems). ``problems`` holds the problem means of both models.
    """

    names: tuple[str, str]
    design: Literal["paired", "independent"]
    confidence: float
    table: pd.DataFrame
    problems: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def __repr__(self) -> str:
        a, b = self.names
        lines = [f"ModelComparison({a} - {b}, {self.design}, problems as units)"]
        for row in self.table.itertuples():
            spread = (
                "(no spread: no interval, no test)"
                if row.test == _NO_SPREAD
                else f"[{row.low:+.4g}, {row.high:+.4g}] p={row.p:.3g}"
            )
            lines.append(f"  {row.quantity:<20} {row.estimate:+.4g} {spread} ({row.kind})")
            if row.kind == "metric" and np.isfinite(row.adjusted):
                lines.append(
                    f"  {'':<20} adjusted for confounds {row.adjusted:+.4g} "
                    f"[{row.adjusted_low:+.4g}, {row.adjusted_high:+.4g}]"
                )
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        header = {
            "names": list(self.names),
            "design": self.design,
            "confidence": self.confidence,
            "table": self.table.to_dict(orient="list"),
            "problems": self.problems.reset_index().to_dict(orient="list"),
        }
        return save_npz(path, _KIND, header, {})

    @classmethod
    def load(cls, path: str | Path) -> ModelComparison:
        header, _ = load_npz(path, _KIND)
        problems = pd.DataFrame(header["problems"]).set_index(["model", "problem"])
        a, b = header["names"]
        return cls(
            (a, b), header["design"], header["confidence"], pd.DataFrame(header["table"]), problems
        )

    def plot(self, *, title: str | None = None) -> Any:
        """One panel per quantity: each model's problem means (points) and their mean with its
        interval; returns the matplotlib Figure."""
        from reasoning_circuits.plotting import _pyplot

        plt = _pyplot()
        quantities = list(self.table["quantity"])
        fig, axes = plt.subplots(
            1, len(quantities), figsize=(2.6 * len(quantities) + 0.6, 3.4), squeeze=False
        )
        rng = np.random.default_rng(0)
        for ax, row in zip(axes[0], self.table.itertuples()):
            for x, name in enumerate(self.names):
                values = self.problems.loc[name][row.quantity].dropna().to_numpy()
                jitter = rng.uniform(-0.12, 0.12, values.size)
                ax.scatter(x + jitter, values, s=10, alpha=0.5, color=f"C{x}")
                if values.size >= 2 and np.ptp(values) > 0:
                    ci = stats.mean_ci(values, confidence=self.confidence, method="t")
                    ax.errorbar(
                        x + 0.3,
                        ci.estimate,
                        [[ci.estimate - ci.low], [ci.high - ci.estimate]],
                        fmt="o",
                        color="black",
                        capsize=3,
                    )
            ax.set_xticks([0, 1], list(self.names))
            ax.set_xlim(-0.5, 1.6)
            label = "\n".join(textwrap.wrap(f"{row.quantity} ({row.kind})", 22))
            tested = "no spread" if row.test == _NO_SPREAD else f"p={row.p:.2g}"
            ax.set_title(f"{label}\nΔ={row.estimate:+.3g}, {tested}", fontsize=9)
        fig.suptitle(
            title
            or f"{self.names[0]} vs {self.names[1]}: problem means, "
            f"mean ± {self.confidence:.0%} t interval",
            fontsize=10,
        )
        fig.tight_layout()
        return fig


def compare_models(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    metrics: Sequence[str],
    problem: str = "problem_id",
    names: tuple[str, str] = ("A", "B"),
    confounds: Sequence[str] = (),
    design: Design = "auto",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> ModelComparison:
    """Compare model A with model B on per-row measurements, with problems as the units.

    Args:
        a, b: one row per measured unit (e.g. per sentence: ``AnchorSet.to_frame()``),
            with a ``problem`` column and the ``metrics``/``confounds`` columns.
        metrics: columns to compare (e.g. ``["importance", "entropy"]``).
        problem: the column naming each row's problem (rows of a problem are averaged).
        names: labels of the two models.
        confounds: columns that could explain a difference (e.g. ``["n_tokens", "sink"]``):
            compared too, and used to adjust every metric's difference.
        design: ``"paired"`` (same problems under both models), ``"independent"``, or
            ``"auto"`` (paired when the problem ids coincide, independent when none is
            shared; a partial overlap is refused: choose).
        confidence, n_resamples, seed: as in :mod:`reasoning_circuits.stats`.
    """
    check_option(design, Design, "design")
    if not metrics:
        raise ValueError("pass at least one metric column, e.g. metrics=['entropy']")
    overlap = set(metrics) & set(confounds)
    if overlap:
        raise ValueError(f"{sorted(overlap)} are both a metric and a confound; pick one")
    if len(set(names)) != 2:
        raise ValueError(f"names must be two different labels, got {names!r}")
    columns = [*metrics, *confounds]
    mean_a = problem_means(a, columns, problem)
    mean_b = problem_means(b, columns, problem)
    shared = mean_a.index.intersection(mean_b.index)
    if design == "auto":
        if len(shared) == len(mean_a) == len(mean_b):
            design = "paired"
        elif len(shared) == 0:
            design = "independent"
        else:
            raise ValueError(
                f"{len(shared)} problems are in both frames, {len(mean_a) - len(shared)} only "
                f"in {names[0]} and {len(mean_b) - len(shared)} only in {names[1]}; pass "
                "design='paired' (compares the shared problems only) or design='independent' "
                "(treats the two sets as independent, which ignores the pairing)"
            )
    if design == "paired":
        if len(shared) < 2:
            raise ValueError(f"only {len(shared)} problem(s) in both frames; pairing needs 2+")
        mean_a, mean_b = mean_a.loc[shared], mean_b.loc[shared]
    rows = []
    for kind, quantities in (("metric", metrics), ("confound", confounds)):
        for quantity in quantities:
            rows.append(
                _compare(mean_a, mean_b, quantity, kind, design, confidence, n_resamples, seed)
            )
    table = pd.DataFrame(rows)
    is_metric = table["kind"] == "metric"
    table["p_holm"] = np.nan
    table.loc[is_metric, "p_holm"] = stats.adjust_pvalues(
        table.loc[is_metric, "p"].fillna(1.0).to_numpy(), method="holm"
    )
    adjusted = [
        _adjusted(mean_a, mean_b, m, list(confounds), design, confidence) if confounds else None
        for m in metrics
    ]
    for column, index in (("adjusted", 0), ("adjusted_low", 1), ("adjusted_high", 2)):
        table[column] = [np.nan if v is None else v[index] for v in adjusted] + [np.nan] * len(
            confounds
        )
    problems = pd.concat({names[0]: mean_a, names[1]: mean_b}, names=["model", "problem"])
    return ModelComparison(names, design, confidence, table, problems)


def _compare(
    mean_a: pd.DataFrame,
    mean_b: pd.DataFrame,
    quantity: str,
    kind: str,
    design: str,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    xa, xb = mean_a[quantity].to_numpy(), mean_b[quantity].to_numpy()
    for name, values in (("a", xa), ("b", xb)):
        if not np.isfinite(values).any():
            raise ValueError(
                f"{quantity!r} has no value in any problem of frame {name} (all NaN); drop "
                "it from metrics/confounds or fill it"
            )
    row: dict[str, Any] = {
        "quantity": quantity,
        "kind": kind,
        "mean_a": float(np.nanmean(xa)),
        "mean_b": float(np.nanmean(xb)),
    }
    diffs = (xa - xb)[np.isfinite(xa - xb)] if design == "paired" else None
    if diffs is not None and diffs.size == 0:
        raise ValueError(f"{quantity!r} has no problem with a value under both models")
    constant = (
        np.ptp(diffs) == 0
        if diffs is not None
        else np.ptp(xa[np.isfinite(xa)]) == 0 and np.ptp(xb[np.isfinite(xb)]) == 0
    )
    if constant:  # no spread: the difference is what it is, no interval or test follows
        estimate = float(diffs[0]) if diffs is not None else float(np.nanmean(xa) - np.nanmean(xb))
        row.update(
            estimate=estimate,
            low=math.nan,
            high=math.nan,
            test=_NO_SPREAD,
            p=math.nan,
            second_test="",
            second_p=math.nan,
            effect_size=math.nan,
            effect_low=math.nan,
            effect_high=math.nan,
            n_a=int(np.isfinite(xa).sum()),
            n_b=int(np.isfinite(xb).sum()),
        )
        return row
    if design == "paired":
        result = stats.paired_test(  # after - before = a - b
            xb, xa, confidence=confidence, n_resamples=n_resamples, seed=seed, nan_policy="omit"
        )
    else:
        result = stats.two_sample(
            xa, xb, confidence=confidence, n_resamples=n_resamples, seed=seed, nan_policy="omit"
        )
    d = result.difference
    tests = result.tests
    row.update(
        estimate=d.estimate,
        low=d.low,
        high=d.high,
        test=tests[0].name,
        p=tests[0].p_value,
        second_test=tests[1].name if len(tests) > 1 else "",
        second_p=tests[1].p_value if len(tests) > 1 else math.nan,
        effect_size=math.nan if result.effect_size is None else result.effect_size.estimate,
        effect_low=math.nan if result.effect_size is None else result.effect_size.low,
        effect_high=math.nan if result.effect_size is None else result.effect_size.high,
        n_a=int(np.isfinite(xa).sum()),
        n_b=int(np.isfinite(xb).sum()),
    )
    return row


def _adjusted(
    mean_a: pd.DataFrame,
    mean_b: pd.DataFrame,
    metric: str,
    confounds: list[str],
    design: str,
    confidence: float,
) -> tuple[float, float, float]:
    """``a - b`` for ``metric`` adjusted linearly for ``confounds`` (OLS, HC3 errors)."""
    import statsmodels.api as sm

    if design == "paired":
        diff = (mean_a[[metric, *confounds]] - mean_b[[metric, *confounds]]).dropna()
        y = diff[metric].to_numpy()
        x = sm.add_constant(diff[confounds].to_numpy(), has_constant="add")
        term = 0  # the intercept: the difference at equal confounds
    else:
        both = pd.concat([mean_a.assign(_model=1.0), mean_b.assign(_model=0.0)])
        both = both[[metric, "_model", *confounds]].dropna()
        y = both[metric].to_numpy()
        x = sm.add_constant(both[["_model", *confounds]].to_numpy(), has_constant="add")
        term = 1
    # a covariate column with no spread (e.g. equal lengths in both models) explains nothing:
    # drop it; one collinear with the model term leaves the difference unidentifiable
    spread = np.ptp(x, axis=0) > 0
    if design == "paired" and np.any(~spread[1:] & (x[0, 1:] != 0)):
        return (math.nan, math.nan, math.nan)  # a constant shift: the intercept's twin
    spread[0] = True  # the intercept
    x = x[:, spread]
    term = int(spread[:term].sum()) if design != "paired" else 0
    if len(y) <= x.shape[1] + 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return (math.nan, math.nan, math.nan)
    fit = sm.OLS(y, x).fit(cov_type="HC3")
    low, high = fit.conf_int(alpha=1 - confidence)[term]
    return float(fit.params[term]), float(low), float(high)
