"""The effect of an intervention: a metric per trace without and with it, and the change.

:func:`measure_effect` runs a trace metric (``metric(model, traces, intervention)``, such as
:func:`~reasoning_circuits.metrics.answer_logprob` or
:func:`~reasoning_circuits.generation.answers_correct`) twice on the same traces, once plain
and once with the intervention, and returns an :class:`Effect`: both per-trace arrays, the
mean paired change and its confidence interval.

The design is paired (each trace is its own control), so the interval is that of the mean
of the per-trace differences; see :mod:`reasoning_circuits.stats` for which interval is used
and why. One trace per problem, please: traces of the same problem are not independent, and
the interval would be too narrow.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reasoning_circuits import stats
from reasoning_circuits._hooks import Intervention
from reasoning_circuits._inputs import as_traces, check_batch_size, check_model
from reasoning_circuits._options import check_option
from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.attention import Method
from reasoning_circuits.metrics import TraceMetric, answer_logprob
from reasoning_circuits.trace import Trace

__all__ = ["Effect", "measure_effect"]


@dataclass(frozen=True)
class Effect:
    """Per-trace metric values ``before`` and ``after`` an intervention, and the mean change.

    ``ci`` is the ``confidence`` interval of ``mean_diff`` (the mean of ``after - before``),
    computed by ``ci_method``; ``p_value`` is that of ``test``, of "no change" (see
    :func:`reasoning_circuits.stats.paired_test`).
    """

    before: np.ndarray
    after: np.ndarray
    ci: tuple[float, float]
    confidence: float
    ci_method: str
    p_value: float
    metric: str
    test: str = "paired t"

    @property
    def diff(self) -> np.ndarray:
        """``after - before`` per trace."""
        return self.after - self.before

    @property
    def mean_diff(self) -> float:
        """The mean change, ``mean(after - before)``."""
        return float(np.mean(self.diff))

    @property
    def n(self) -> int:
        """Number of traces."""
        return len(self.before)

    def to_frame(self) -> pd.DataFrame:
        """One row per trace: ``trace, before, after, diff``."""
        return pd.DataFrame(
            {
                "trace": np.arange(len(self.before)),
                "before": self.before,
                "after": self.after,
                "diff": self.diff,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Write ``.npz``: ``before``, ``after`` and the interval, plus a JSON header."""
        header = {
            "confidence": self.confidence,
            "ci_method": self.ci_method,
            "metric": self.metric,
            "test": self.test,
        }
        arrays = {
            "before": self.before,
            "after": self.after,
            "ci": np.asarray(self.ci, dtype=float),
            "p_value": np.asarray(self.p_value, dtype=float),
        }
        return save_npz(path, "Effect", header, arrays)

    @classmethod
    def load(cls, path: str | Path) -> Effect:
        """Read an effect written by :meth:`save`."""
        header, arrays = load_npz(path, "Effect")
        low, high = (float(x) for x in arrays["ci"])
        return cls(
            arrays["before"],
            arrays["after"],
            (low, high),
            float(header["confidence"]),
            str(header["ci_method"]),
            float(arrays["p_value"]),
            str(header["metric"]),
            str(header["test"]),
        )

    def __str__(self) -> str:
        low, high = self.ci
        return (
            f"{self.metric}: {self.before.mean():.4f} → {self.after.mean():.4f} "
            f"(mean change {self.mean_diff:+.4f}, {self.confidence:.0%} CI [{low:+.4f}, "
            f"{high:+.4f}] ({self.ci_method}), {self.test} p = {self.p_value:.3g}, n = {self.n})"
        )


def _takes(metric: TraceMetric, name: str) -> bool:
    """Whether ``metric`` accepts the keyword argument ``name``."""
    accepted = inspect.signature(metric).parameters
    return name in accepted or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()
    )


def _call(metric: TraceMetric, model: Any, traces: list[Trace], intervention: Any, **kw: Any):
    """Call ``metric`` with the keyword arguments it accepts (``batch_size``, ``progress``)."""
    accepted = inspect.signature(metric).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    options = {k: v for k, v in kw.items() if takes_all or k in accepted}
    values = np.asarray(metric(model, traces, intervention, **options), dtype=float)
    if values.shape != (len(traces),):
        raise ValueError(
            f"the metric returned shape {values.shape}; a trace metric returns one value per "
            f"trace, shape ({len(traces)},)"
        )
    return values


def measure_effect(
    model: Any,
    traces: Trace | Sequence[Trace],
    intervention: Intervention,
    metric: TraceMetric | None = None,
    *,
    batch_size: int = 8,
    confidence: float = 0.95,
    progress: bool | None = None,
    seed: int = 0,
    method: Method = "auto",
) -> Effect:
    """The metric per trace without and with ``intervention``, and the mean paired change.

    Args:
        model: a ``TransformerBridge``.
        traces: one :class:`Trace` or a sequence (one trace per problem).
        intervention: e.g. a :class:`~reasoning_circuits.interventions.HeadIntervention`.
        metric: ``metric(model, traces, intervention_or_None)`` → one value per trace;
            default :func:`~reasoning_circuits.metrics.answer_logprob` (nats). It gets
            ``batch_size`` and ``progress`` if its signature takes them.
        batch_size: traces per forward pass.
        confidence: level of the interval, in (0, 1).
        progress: progress bars (default: when there is more than one batch).
        seed: seed of the bootstrap, where one is used.
        method: how attention runs, passed to a metric that takes ``method=`` (such as
            :func:`~reasoning_circuits.metrics.answer_logprob`): ``"pattern"`` (hooks on the
            eager forward), ``"fast"`` (no ``[T × T]`` matrix; only knockouts) or ``"auto"``
            (fast from 1024 tokens when possible). A metric without ``method=`` is refused
            anything but ``"auto"``.

    Returns:
        An :class:`Effect`, with the interval and test of
        :func:`reasoning_circuits.stats.paired_test`: a metric whose values are all 0/1
        (accuracy) gets Newcombe's interval for the difference of paired proportions and the
        exact McNemar test; any other gets the hybrid (t ∪ studentized bootstrap) interval of
        the mean difference and the paired t test. When every trace changes by exactly the
        same amount (e.g. an intervention that changes nothing) no interval can be estimated:
        the change is reported as a point with ``p_value`` NaN.
    """
    check_model(model)
    trace_list = as_traces(traces)
    check_batch_size(batch_size)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    check_option(method, Method, "method")
    score = metric or answer_logprob
    kw: dict[str, Any] = {"batch_size": batch_size, "progress": progress}
    if method != "auto":
        if not _takes(score, "method"):
            raise ValueError(
                f"method={method!r} is passed to the metric, but "
                f"{getattr(score, '__name__', 'the metric')} takes no method= argument; leave "
                "method='auto' or use a metric that takes it (rc.metrics.answer_logprob, "
                "answer_kl)"
            )
        kw["method"] = method
    elif _takes(score, "method"):
        kw["method"] = method
    before = _call(score, model, trace_list, None, **kw)
    after = _call(score, model, trace_list, intervention, **kw)
    for name, values in (("before", before), ("after", after)):
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))[:5].tolist()
            raise ValueError(
                f"the metric is not finite {name} the intervention for traces {bad}; "
                "check those traces (an empty answer?) or use a metric that is defined there"
            )
    name = getattr(score, "__name__", "metric")
    if np.isin(before, (0.0, 1.0)).all() and np.isin(after, (0.0, 1.0)).all():
        # right/wrong outcomes: Newcombe's paired interval and exact McNemar, which stay
        # honest when nothing flips (0 of 60 flipped is not a [0, 0] interval)
        comparison = stats.paired_binary(before, after, confidence=confidence)
    else:
        diff = after - before
        if np.all(diff == diff[0]):
            # No spread: no interval follows from the data (stats refuses one). Report the
            # constant change as a point and no p-value rather than invent a width.
            change, ci_method = float(diff[0]), "none: every trace changed equally"
            return Effect(
                before, after, (change, change), confidence, ci_method, np.nan, name, "none"
            )
        comparison = stats.paired_test(before, after, confidence=confidence, seed=seed)
    d = comparison.difference
    return Effect(
        before,
        after,
        (d.low, d.high),
        confidence,
        d.method,
        comparison.p_value,
        name,
        comparison.tests[0].name,
    )
