"""Accuracy with and without reasoning, paired by problem (R2A §2, done soundly).

R2A asks what a reasoning model's chain of thought is worth: each problem is answered once
*with* reasoning (prompt ending ``<think>\\n``) and once *without* (the reasoning skipped with
an empty or a "finished" think block, see :mod:`reasoning_circuits.prompts`), and the two
accuracies are compared. :func:`evaluate` does this from the records of
:func:`~reasoning_circuits.collection.collect_traces` and returns an :class:`Evaluation`.

>>> result = evaluate(with_records, without_records, problems, kind="math")  # doctest: +SKIP
>>> result.to_frame()       # accuracy per arm and set, the paired difference  # doctest: +SKIP

The funnel
----------
Every record passes (or fails) four stages, counted per arm by :meth:`Evaluation.funnel`:

``total``
    the records of the arm.
``finished``
    the model stopped at its end-of-sequence token (not at ``max_new_tokens``). R2A's
    Llama-8B finished 412 of 500 MATH-500 problems with reasoning: the 88 others are likely
    the hardest.
``well_formed``
    the think block is closed exactly once and an answer follows. With reasoning the
    generated text holds exactly one ``</think>`` and no ``<think>`` (the prompt opened it);
    without reasoning (the prompt closed it) the generated text holds neither tag. In both
    the answer segment (the text after the reasoning, a trailing end-of-sequence marker such
    as ``<|endoftext|>`` removed) is not blank.
``extracted``
    an answer could be read from the answer segment (:func:`reasoning_circuits.grading.grade`:
    the last ``\\boxed{}``, ``####``, or the last number).

and then ``correct``. A record that passes all four stages is *valid*.

Two accuracies
--------------
* **Intention-to-treat (ITT)**: over every problem, an unfinished, malformed or unanswered
  record counts as wrong. This is the accuracy a user of the model gets.
* **Valid set**: over the problems valid in *both* arms (R2A's only number). It compares
  like with like, but it drops problems by what the model did: if reasoning runs out of
  tokens on hard problems, those leave the valid set and the valid-set accuracy with
  reasoning is inflated. Report both; when they disagree, the funnel says why.

Statistics (all from :mod:`reasoning_circuits.stats`)
----------------------------------------------------
The two arms answer the *same* problems, so every comparison is paired by problem.

* One sample per problem (``n_samples == 1`` in both arms): accuracy of an arm is ``k`` of
  ``n`` with Wilson's interval (:func:`~reasoning_circuits.stats.proportion_ci`). The
  difference (with − without) gets Newcombe's paired interval and the **exact McNemar test**
  (:func:`~reasoning_circuits.stats.paired_binary`): only problems that flip (right with,
  wrong without, or the reverse) carry information about the difference, and under "no
  difference" each flip goes either way with probability 1/2, a binomial test. R2A used a
  paired t test on 0/1 outcomes, whose normal approximation is poor for few flips.
* Several samples per problem: samples of one problem are *not* independent (an easy problem
  is right in all of them), so problems are the units. Each problem gets a pass rate per arm
  (its share of correct samples); an arm's accuracy is the mean pass rate with
  :func:`~reasoning_circuits.stats.mean_ci` over problems (the ``cluster_mean`` of
  :func:`~reasoning_circuits.stats.cluster_bootstrap_ci`, bounded to [0, 1]), and the
  difference is the mean per-problem difference with
  :func:`~reasoning_circuits.stats.paired_test` (its interval; paired t, with Wilcoxon as a
  second test). Treating 4 samples of 50 problems as 200 independent answers gives an
  interval too narrow by up to √4 = 2 (see the tests).
* Both designs also report a **paired bootstrap** interval of the difference: problems are
  resampled with replacement (:func:`~reasoning_circuits.stats.bootstrap_indices`) and the
  2.5% and 97.5% quantiles of the mean difference are read (percentile method).
* Breakdowns (by subject, level, ...) repeat the statistics per group. A group with fewer
  than ``min_group`` problems gets no interval and a note saying so. The p-values of the
  groups of one field are Holm-adjusted (``p_holm``): with 7 subjects, one of them reaching
  p < 0.05 by chance is likely.

Caveats
-------
* With several samples the valid-set pass rate of a problem is taken over its valid samples
  only; a problem is in the valid set when it has at least one valid sample in each arm.
* A ``"timeout"`` grade (math-verify did not finish) counts as extracted and wrong.
* Both arms must hold the same problems. Problems may hold more (a whole dataset); only the
  problems in the runs are evaluated.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reasoning_circuits import stats
from reasoning_circuits._options import check_option
from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.collection import RecordSet, TraceRecord, read_records
from reasoning_circuits.grading import DEFAULT_TIMEOUT, Kind, Reason, grade_many

__all__ = [
    "ARMS",
    "SETS",
    "Arm",
    "Evaluation",
    "EvaluationInputError",
    "GroupResult",
    "Outcome",
    "SetName",
    "SetResult",
    "answer_text",
    "classify",
    "evaluate",
    "load_runs",
]

Arm = Literal["with", "without"]
"""``"with"``: the reasoning arm; ``"without"``: the arm whose reasoning was skipped."""
ARMS: tuple[Arm, ...] = ("with", "without")
SetName = Literal["itt", "valid"]
"""``"itt"``: every problem (failures count as wrong); ``"valid"``: problems valid in both arms."""
SETS: tuple[SetName, ...] = ("itt", "valid")
Runs = RecordSet | Sequence[TraceRecord] | str | os.PathLike[str]
"""Records of one arm: a :class:`RecordSet`, a sequence of records, or a JSONL file path."""

_KIND = "Evaluation"
_MODE_OF_ARM: dict[Arm, tuple[str, ...]] = {
    "with": ("reasoning",),
    "without": ("empty", "finished"),
}
# The parameters that must agree between the records of one arm.
_ARM_KEYS = ("model", "mode", "template", "instruction", "temperature", "top_p", "max_new_tokens")
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
# A trailing end-of-sequence marker: <|endoftext|>, <|im_end|>, <｜end▁of▁sentence｜>, </s>, <eos>
EMPTY_ANSWER = "the answer segment is empty"
"""Why :func:`answer_text` gives None for a blank answer."""
_EOS_TAIL = re.compile(r"(?:<\|[^<>|\s]{1,40}\|>|<｜[^<>｜\s]{1,60}｜>|</s>|<eos>)+\s*\Z")


class EvaluationInputError(ValueError):
    """The runs or problems given to :func:`evaluate` cannot be compared as they are."""


# --------------------------------------------------------------------------------------------
# One record
# --------------------------------------------------------------------------------------------


def answer_text(text: str, mode: str) -> tuple[str | None, str]:
    """``(answer segment or None, why not)`` of a record's generated ``text`` in ``mode``.

    With reasoning (``mode="reasoning"``) the text must hold exactly one ``</think>`` and no
    ``<think>``; without (``"empty"``/``"finished"``) it must hold neither. The answer is the
    text after the reasoning with a trailing end-of-sequence marker (``<|endoftext|>``,
    ``<｜end▁of▁sentence｜>``, ``</s>``, ...) and surrounding whitespace removed; a blank
    answer gives None.
    """
    closes, opens = text.count(_THINK_CLOSE), text.count(_THINK_OPEN)
    if mode == "reasoning":
        if closes == 0:
            return None, "the reasoning is never closed by </think>"
        if closes > 1 or opens:
            return None, f"the think tags repeat ({opens} <think>, {closes} </think> generated)"
        segment = text.split(_THINK_CLOSE, 1)[1]
    else:
        if closes or opens:
            return None, (
                f"the prompt closed the reasoning but the model wrote {opens} <think> and "
                f"{closes} </think>"
            )
        segment = text
    segment = _EOS_TAIL.sub("", segment).strip()
    if not segment:
        return None, EMPTY_ANSWER
    return segment, ""


@dataclass(frozen=True)
class Outcome:
    """What happened to one record: the funnel stages it passed and its grade.

    ``reason`` is a :data:`reasoning_circuits.grading.Reason`: ``"unfinished"`` (no EOS),
    ``"malformed"`` (think tags or an empty answer, or an unclosed ``\\boxed{``),
    ``"no_answer"``, ``"timeout"``, ``"wrong"`` or ``"correct"``.
    """

    arm: Arm
    id: str
    sample: int
    finished: bool
    well_formed: bool
    extracted: bool
    correct: bool
    reason: Reason
    answer: str = ""
    detail: str = ""

    @property
    def valid(self) -> bool:
        """Finished, well-formed and an answer extracted."""
        return self.extracted


def classify(record: TraceRecord, gold: str, *, arm: Arm, kind: Kind, **options: Any) -> Outcome:
    """The :class:`Outcome` of one record against its gold answer (see the module docstring).

    ``options`` go to :func:`reasoning_circuits.grading.grade_many`.
    """
    return _classify([record], [gold], arm=arm, kind=kind, **options)[0]


def _classify(
    records: Sequence[TraceRecord],
    golds: Sequence[str],
    *,
    arm: Arm,
    kind: Kind,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
) -> list[Outcome]:
    out: list[Outcome | None] = [None] * len(records)
    to_grade: list[tuple[int, str]] = []
    for i, record in enumerate(records):
        if not record.finished:
            out[i] = Outcome(
                arm, record.id, record.sample, False, False, False, False, "unfinished",
                detail=f"stopped by {record.stop_reason} after {record.n_generated_tokens} tokens",
            )  # fmt: skip
            continue
        segment, why = answer_text(record.text, record.mode)
        if segment is None:
            out[i] = Outcome(
                arm, record.id, record.sample, True, False, False, False, "malformed", detail=why
            )
            continue
        to_grade.append((i, segment))
    if to_grade:
        grades = grade_many(
            [segment for _, segment in to_grade],
            [golds[i] for i, _ in to_grade],
            kind=kind,
            think="optional",
            timeout=timeout,
            workers=workers,
            progress=False,
        )
        for (i, _), g in zip(to_grade, grades, strict=True):
            r = records[i]
            out[i] = Outcome(
                arm, r.id, r.sample, True, True, g.extracted is not None, g.correct, g.reason,
                answer=g.extracted or "", detail=g.detail,
            )  # fmt: skip
    return [o for o in out if o is not None]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def load_runs(runs: Runs, *, name: str = "runs") -> list[TraceRecord]:
    """The records of ``runs`` (a :class:`RecordSet`, a sequence of records, or a JSONL path)."""
    if isinstance(runs, str | os.PathLike):
        path = Path(runs)
        if not path.exists():
            raise FileNotFoundError(f"{name}: no record file at {path}")
        return list(read_records(path))
    if isinstance(runs, TraceRecord):
        raise TypeError(f"{name} is one TraceRecord; pass a sequence of records (e.g. [record])")
    records = list(runs)
    for i, record in enumerate(records):
        if not isinstance(record, TraceRecord):
            raise TypeError(
                f"{name}[{i}] is a {type(record).__name__}, not a TraceRecord; pass the output "
                "of collect_traces, a RecordSet, or the path of its JSONL file"
            )
    return records


def _examples(items: Iterable[Any], n: int = 3) -> str:
    items = sorted(items, key=str)
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _check_arm(records: list[TraceRecord], arm: Arm) -> dict[str, Any]:
    name = f"{arm}_runs"
    if not records:
        raise EvaluationInputError(f"{name} is empty: there is nothing to evaluate")
    keys = Counter(r.key for r in records)
    repeated = [k for k, c in keys.items() if c > 1]
    if repeated:
        raise EvaluationInputError(
            f"{name} holds {len(repeated)} (id, sample) pairs more than once, e.g. "
            f"{_examples(repeated)}: two runs were concatenated. Keep one record per "
            "(id, sample), e.g. RecordSet.load(path1, path2) merges identical copies"
        )
    for key in _ARM_KEYS:
        values = Counter(str(getattr(r, key)) for r in records)
        if len(values) > 1:
            raise EvaluationInputError(
                f"{name} mixes records with different {key}: "
                + ", ".join(f"{v!r} ({c} records)" for v, c in values.most_common())
                + ". One arm is one setting; evaluate each setting on its own"
            )
    mode = records[0].mode
    if mode not in _MODE_OF_ARM[arm]:
        wanted = " or ".join(repr(m) for m in _MODE_OF_ARM[arm])
        raise EvaluationInputError(
            f"{name} was collected in mode {mode!r}, but the {arm!r}-reasoning arm needs mode "
            f"{wanted}; did you swap with_runs and without_runs?"
        )
    per_problem = Counter(r.id for r in records)
    counts = Counter(per_problem.values())
    if len(counts) > 1:
        few = [pid for pid, c in per_problem.items() if c < max(counts)]
        raise EvaluationInputError(
            f"{name} has an unequal number of samples per problem "
            f"({', '.join(f'{c} problems with {s}' for s, c in sorted(counts.items()))}), e.g. "
            f"{_examples(few)} have fewer: the collection was interrupted. Rerun "
            "collect_traces with the same out= to complete it"
        )
    return {"model": records[0].model, "mode": mode, "n_samples": max(counts)}


def _check_problems(problems: Sequence[Any]) -> dict[str, Any]:
    if isinstance(problems, str) or not isinstance(problems, Iterable):
        raise TypeError("problems must be a sequence of Problem objects (rc.datasets.load_*)")
    by_id: dict[str, Any] = {}
    for p in problems:
        if not (hasattr(p, "id") and hasattr(p, "gold")):
            raise TypeError(
                f"problems must have .id and .gold (rc.datasets.Problem); got {type(p).__name__}"
            )
        if str(p.id) in by_id:
            raise EvaluationInputError(f"problem id {p.id!r} occurs twice in problems")
        by_id[str(p.id)] = p
    if not by_id:
        raise EvaluationInputError("problems is empty: the gold answers come from problems")
    return by_id


def _resolve_kind(problems: Iterable[Any], kind: Kind | None) -> Kind:
    kinds: set[str] = {str(p.kind) for p in problems if getattr(p, "kind", None) is not None}
    if kind is None:
        if len(kinds) != 1:
            raise EvaluationInputError(
                f"the problems have kinds {sorted(kinds) or 'None'}; pass kind='math' or "
                "kind='gsm8k' to say how answers are compared"
            )
        found = kinds.pop()
        check_option(found, Kind, "the problems' kind")
        return found  # type: ignore[return-value]
    else:
        check_option(kind, Kind, "kind")
        other = kinds - {kind}
        if other:
            raise EvaluationInputError(
                f"kind={kind!r} but the problems are of kind {sorted(other)}; pass "
                f"kind={sorted(other)[0]!r} (or leave kind=None to take it from the problems)"
            )
    return kind


def _check_same_problems(arms: Mapping[str, Sequence[TraceRecord]]) -> dict[str, set[str]]:
    """The problem ids of each arm; refuses arms that answer different problems."""
    ids = {arm: {r.id for r in records} for arm, records in arms.items()}
    if ids["with"] != ids["without"]:
        only_with, only_without = ids["with"] - ids["without"], ids["without"] - ids["with"]
        parts = []
        if only_with:
            parts.append(f"{len(only_with)} only with reasoning (e.g. {_examples(only_with)})")
        if only_without:
            parts.append(
                f"{len(only_without)} only without reasoning (e.g. {_examples(only_without)})"
            )
        raise EvaluationInputError(
            f"the arms answer different problems ({len(ids['with'])} with, "
            f"{len(ids['without'])} without reasoning): {'; '.join(parts)}. A paired "
            "comparison needs the same problems in both: collect the missing ones (rerun "
            "collect_traces with the same out= and all problems), or keep the shared ones "
            "in both arms: shared = {r.id for r in with_runs} & {r.id for r in without_runs}; "
            "with_runs = [r for r in with_runs if r.id in shared] (and the same for "
            "without_runs)"
        )
    return ids


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetResult:
    """The comparison on one set of problems (``"itt"`` or ``"valid"``).

    ``accuracy_with``/``accuracy_without``: accuracy per arm with its interval;
    ``difference``: with − without, its interval and tests (primary first);
    ``bootstrap``: the paired bootstrap (percentile) interval of the same difference.
    ``n_problems``: problems in the set; ``correct_with``/``correct_without``: correct records.
    All statistics are None when the set has fewer than ``min_group`` problems (``note``
    says so).
    """

    name: SetName
    n_problems: int
    correct_with: int
    correct_without: int
    accuracy_with: stats.Interval | None
    accuracy_without: stats.Interval | None
    difference: stats.Comparison | None
    bootstrap: stats.Interval | None
    note: str = ""

    @property
    def p_value(self) -> float:
        """p of the primary test (NaN without a comparison)."""
        return math.nan if self.difference is None else self.difference.p_value

    def to_dict(self) -> dict[str, Any]:
        def d(x: Any) -> Any:
            return None if x is None else x.to_dict()

        return {
            "name": self.name,
            "n_problems": self.n_problems,
            "correct_with": self.correct_with,
            "correct_without": self.correct_without,
            "accuracy_with": d(self.accuracy_with),
            "accuracy_without": d(self.accuracy_without),
            "difference": d(self.difference),
            "bootstrap": d(self.bootstrap),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SetResult:
        def i(x: Any) -> stats.Interval | None:
            return None if x is None else stats.Interval.from_dict(x)

        return cls(
            data["name"],
            int(data["n_problems"]),
            int(data["correct_with"]),
            int(data["correct_without"]),
            i(data["accuracy_with"]),
            i(data["accuracy_without"]),
            None if data["difference"] is None else stats.Comparison.from_dict(data["difference"]),
            i(data["bootstrap"]),
            data.get("note", ""),
        )


@dataclass(frozen=True)
class GroupResult:
    """:class:`SetResult` of one group of a breakdown field, with the Holm-adjusted p over
    the groups of that field (and set)."""

    field: str
    group: Any
    result: SetResult
    p_holm: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "group": self.group,
            "result": self.result.to_dict(),
            "p_holm": None if math.isnan(self.p_holm) else self.p_holm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupResult:
        p = data["p_holm"]
        return cls(
            data["field"],
            data["group"],
            SetResult.from_dict(data["result"]),
            math.nan if p is None else float(p),
        )


@dataclass(frozen=True)
class _Settings:
    confidence: float
    n_resamples: int
    seed: int
    min_group: int
    binary: bool


def _bootstrap_difference(d: np.ndarray, s: _Settings) -> stats.Interval | None:
    """Percentile interval of ``mean(d)`` over problems resampled with replacement."""
    if d.size < 2:
        return None
    idx = stats.bootstrap_indices(d.size, s.n_resamples, seed=s.seed)
    means = d[idx].mean(axis=1)
    tail = (1 - s.confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    estimate = float(d.mean())
    return stats.Interval(
        estimate,
        min(float(low), estimate),
        max(float(high), estimate),
        s.confidence,
        "paired bootstrap (percentile)",
        int(d.size),
    )


def _accuracy(rates: np.ndarray, s: _Settings) -> stats.Interval:
    if s.binary:
        return stats.proportion_ci(int(rates.sum()), rates.size, confidence=s.confidence)
    return stats.mean_ci(
        rates, confidence=s.confidence, n_resamples=s.n_resamples, seed=s.seed, bounds=(0.0, 1.0)
    )


def _compare(
    name: SetName,
    rate_with: np.ndarray,
    rate_without: np.ndarray,
    correct_with: int,
    correct_without: int,
    s: _Settings,
) -> SetResult:
    """Statistics of one set; ``rate_*[problem]`` are 0/1 outcomes or pass rates."""
    n = rate_with.size
    minimum = max(s.min_group, 1 if s.binary else 2)
    if n < minimum:
        note = (
            f"only {n} problem{'s' * (n != 1)} (fewer than min_group={minimum}): no interval"
            if n
            else "no problem in this set"
        )
        return SetResult(name, n, correct_with, correct_without, None, None, None, None, note)
    if s.binary:
        difference = stats.paired_binary(rate_without, rate_with, confidence=s.confidence)
    else:
        difference = stats.paired_test(
            rate_without,
            rate_with,
            confidence=s.confidence,
            n_resamples=s.n_resamples,
            seed=s.seed,
            bounds=(0.0, 1.0),
        )
    return SetResult(
        name,
        n,
        correct_with,
        correct_without,
        _accuracy(rate_with, s),
        _accuracy(rate_without, s),
        difference,
        _bootstrap_difference(rate_with - rate_without, s),
    )


@dataclass(frozen=True)
class _Table:
    """Per-problem arrays of both arms (problems in ``ids`` order)."""

    ids: list[str]
    itt: dict[Arm, np.ndarray]  # pass rate over all samples
    valid_rate: dict[Arm, np.ndarray]  # pass rate over valid samples (NaN: none valid)
    n_valid: dict[Arm, np.ndarray]
    correct: dict[Arm, np.ndarray]  # correct samples
    n: dict[Arm, np.ndarray]  # samples


def _table(outcomes: Sequence[Outcome], ids: list[str]) -> _Table:
    index = {pid: i for i, pid in enumerate(ids)}
    tables: dict[str, dict[Arm, np.ndarray]] = {
        k: {a: np.zeros(len(ids)) for a in ARMS} for k in ("n", "correct", "n_valid", "vcorr")
    }
    for o in outcomes:
        i = index[o.id]
        tables["n"][o.arm][i] += 1
        tables["correct"][o.arm][i] += o.correct
        tables["n_valid"][o.arm][i] += o.valid
        tables["vcorr"][o.arm][i] += o.correct and o.valid
    with np.errstate(invalid="ignore", divide="ignore"):
        valid_rate = {a: tables["vcorr"][a] / tables["n_valid"][a] for a in ARMS}
    return _Table(
        ids,
        {a: tables["correct"][a] / tables["n"][a] for a in ARMS},
        valid_rate,
        tables["n_valid"],
        tables["correct"],
        tables["n"],
    )


def _set_results(t: _Table, rows: np.ndarray, s: _Settings) -> dict[SetName, SetResult]:
    """ITT and valid-set results on the problems ``rows`` (a boolean mask)."""
    itt = _compare(
        "itt",
        t.itt["with"][rows],
        t.itt["without"][rows],
        int(t.correct["with"][rows].sum()),
        int(t.correct["without"][rows].sum()),
        s,
    )
    both = rows & (t.n_valid["with"] > 0) & (t.n_valid["without"] > 0)
    vw, vo = t.valid_rate["with"][both], t.valid_rate["without"][both]
    valid = _compare(
        "valid",
        vw,
        vo,
        int(np.round(np.sum(vw * t.n_valid["with"][both]))),
        int(np.round(np.sum(vo * t.n_valid["without"][both]))),
        s,
    )
    return {"itt": itt, "valid": valid}


def _group_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def _breakdown(
    t: _Table, problems: Mapping[str, Any], fields: Sequence[str], s: _Settings
) -> list[GroupResult]:
    out: list[GroupResult] = []
    for name in fields:
        values = [problems[pid].metadata.get(name) for pid in t.ids]
        groups = sorted({v for v in values if v is not None}, key=_group_key)
        per_set: dict[SetName, list[tuple[Any, SetResult]]] = {"itt": [], "valid": []}
        for g in groups:
            rows = np.array([v == g for v in values])
            results = _set_results(t, rows, s)
            for set_name in SETS:
                per_set[set_name].append((g, results[set_name]))
        for set_name in SETS:
            adjusted = stats.adjust_pvalues(
                [r.p_value for _, r in per_set[set_name]] or [math.nan], method="holm"
            )
            for (g, r), p in zip(per_set[set_name], adjusted, strict=False):
                out.append(GroupResult(name, g, r, float(p)))
    return out


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """The with/without-reasoning comparison of :func:`evaluate` (plain data).

    Attributes:
        kind: how answers were graded (``"math"`` or ``"gsm8k"``).
        models, modes: per arm (``{"with": ..., "without": ...}``).
        n_samples: samples per problem per arm.
        sets: ``{"itt": SetResult, "valid": SetResult}``.
        groups: the breakdown, one :class:`GroupResult` per (field, group, set).
        outcomes: one :class:`Outcome` per record (both arms).
        metadata: per problem id, the breakdown fields' values.
        confidence, n_resamples, seed, min_group: the settings of the statistics.
    """

    kind: Kind
    models: Mapping[Arm, str]
    modes: Mapping[Arm, str]
    n_samples: Mapping[Arm, int]
    sets: Mapping[SetName, SetResult]
    groups: tuple[GroupResult, ...]
    outcomes: tuple[Outcome, ...]
    metadata: Mapping[str, Mapping[str, Any]]
    fields: tuple[str, ...]
    confidence: float
    n_resamples: int
    seed: int
    min_group: int

    # ------------------------------------------------------------------ views
    @property
    def n_problems(self) -> int:
        """Problems evaluated (in both arms)."""
        return self.sets["itt"].n_problems

    @property
    def binary(self) -> bool:
        """One sample per problem in both arms (0/1 outcomes, McNemar)."""
        return self.n_samples["with"] == 1 and self.n_samples["without"] == 1

    def __repr__(self) -> str:
        def part(r: SetResult) -> str:
            if r.difference is None:
                return f"{r.name}: {r.n_problems} problems, {r.note}"
            a, b, d = r.accuracy_with, r.accuracy_without, r.difference.difference
            assert a is not None and b is not None
            return (
                f"{r.name} n={r.n_problems}: {a.estimate:.3f} vs {b.estimate:.3f}, "
                f"diff {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}] p={r.p_value:.3g}"
            )

        samples = f"{self.n_samples['with']}/{self.n_samples['without']} samples"
        return (
            f"Evaluation({self.kind}, {self.models['with']!r} {self.modes['with']} vs "
            f"{self.modes['without']}, {self.n_problems} problems × {samples}; "
            f"{part(self.sets['itt'])}; {part(self.sets['valid'])})"
        )

    def to_frame(self) -> Any:
        """One row per (set, arm): ``arm`` is ``"with"``, ``"without"`` or ``"difference"``.

        Columns: ``set, arm, mode, n_problems, correct, estimate, low, high, method, test,
        statistic, p_value, boot_low, boot_high, note``. For the arms ``estimate`` is the
        accuracy; for ``"difference"`` it is with − without with the paired interval, the
        primary test and the paired bootstrap interval.
        """
        import pandas as pd

        rows = []
        for r in self.sets.values():
            rows.extend(_set_rows(r, self.modes))
        return pd.DataFrame(rows)

    def funnel(self) -> Any:
        """Record counts per arm at each stage: ``total, finished, well_formed, extracted,
        correct``, plus ``valid_both`` (problems valid in both arms) and the reasons
        ``unfinished, malformed, no_answer, timeout, wrong``."""
        import pandas as pd

        both = self.sets["valid"].n_problems
        rows = []
        for arm in ARMS:
            mine = [o for o in self.outcomes if o.arm == arm]
            reasons = Counter(o.reason for o in mine)
            rows.append(
                {
                    "arm": arm,
                    "mode": self.modes[arm],
                    "total": len(mine),
                    "finished": sum(o.finished for o in mine),
                    "well_formed": sum(o.well_formed for o in mine),
                    "extracted": sum(o.extracted for o in mine),
                    "correct": sum(o.correct for o in mine),
                    "valid_both": both,
                    **{
                        r: reasons.get(r, 0)
                        for r in ("unfinished", "malformed", "no_answer", "timeout", "wrong")
                    },
                }
            )
        return pd.DataFrame(rows)

    def breakdown(self, by: str | None = None) -> Any:
        """The per-group table of ``by`` (one of :attr:`fields`; None: all fields).

        Columns: ``field, group, set, n_problems, acc_with, acc_with_low, acc_with_high,
        acc_without, ..., difference, low, high, test, p_value, p_holm, boot_low, boot_high,
        note``. Groups with fewer than ``min_group`` problems have NaN statistics and a note.
        """
        import pandas as pd

        if by is not None and by not in self.fields:
            raise KeyError(
                f"no breakdown by {by!r}; this evaluation has {list(self.fields) or 'none'}. "
                f"Pass by=({by!r},) to evaluate"
            )
        rows = []
        for g in self.groups:
            if by is not None and g.field != by:
                continue
            r = g.result
            row: dict[str, Any] = {"field": g.field, "group": g.group, "set": r.name}
            row.update(_flat(r))
            row["p_holm"] = g.p_holm
            row["note"] = r.note
            rows.append(row)
        return pd.DataFrame(rows)

    def per_problem(self) -> Any:
        """One row per problem: ``id``, the breakdown fields, ``n_with, n_without`` (samples),
        ``pass_with, pass_without`` (ITT pass rates), ``valid_with, valid_without`` (valid
        samples), ``difference`` (ITT, with − without)."""
        import pandas as pd

        ids = sorted({o.id for o in self.outcomes})
        t = _table(self.outcomes, ids)
        frame = pd.DataFrame({"id": ids})
        for name in self.fields:
            frame[name] = [self.metadata.get(pid, {}).get(name) for pid in ids]
        for arm in ARMS:
            frame[f"n_{arm}"] = t.n[arm].astype(int)
        for arm in ARMS:
            frame[f"pass_{arm}"] = t.itt[arm]
        for arm in ARMS:
            frame[f"valid_{arm}"] = t.n_valid[arm].astype(int)
        frame["difference"] = t.itt["with"] - t.itt["without"]
        return frame

    def records(self) -> Any:
        """One row per record (both arms): the :class:`Outcome` fields."""
        import pandas as pd

        return pd.DataFrame([o.__dict__ for o in self.outcomes])

    # ------------------------------------------------------------------ plot
    def plot(self, *, title: str | None = None, path: str | Path | None = None) -> Any:
        """Paired bars: accuracy with and without reasoning, ITT and on the valid set, with
        their intervals; the difference and its p above each pair. Returns the matplotlib
        Figure (saved to ``path`` as PNG when given)."""
        from reasoning_circuits.plotting import _pyplot, _set_wrapped_title

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
        width = 0.36
        colours = {"with": "#3b6ea8", "without": "#d9893b"}
        labels = []
        for x, set_name in enumerate(SETS):
            r = self.sets[set_name]
            what = "all problems (ITT)" if set_name == "itt" else "valid in both"
            labels.append(f"{what}\nn = {r.n_problems}")
            for offset, arm in ((-width / 2, "with"), (width / 2, "without")):
                acc = r.accuracy_with if arm == "with" else r.accuracy_without
                if acc is None:
                    continue
                ax.bar(
                    x + offset,
                    acc.estimate,
                    width,
                    color=colours[arm],
                    label=None
                    if x
                    else "with reasoning"
                    if arm == "with"
                    else f"without reasoning ({self.modes['without']})",
                )
                ax.errorbar(
                    x + offset,
                    acc.estimate,
                    yerr=[[acc.estimate - acc.low], [acc.high - acc.estimate]],
                    color="black",
                    capsize=4,
                    lw=1.2,
                )
                ax.text(
                    x + offset,
                    acc.high + 0.01,
                    f"{acc.estimate:.0%}",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            if r.difference is not None:
                d = r.difference.difference
                ax.text(
                    x,
                    1.09,
                    f"Δ {d.estimate:+.1%} [{d.low:+.1%}, {d.high:+.1%}]\np = {r.p_value:.2g}",
                    ha="center",
                    va="bottom",
                    fontsize=9,
                )
            else:
                ax.text(x, 1.09, r.note, ha="center", va="bottom", fontsize=8, wrap=True)
        ax.set_xticks(range(len(SETS)), labels)
        ax.set_ylim(0, 1.22)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel(f"accuracy ({self.confidence:.0%} CI)")
        fig.legend(loc="outside lower center", ncols=2, fontsize=9, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        itt = self.sets["itt"].difference
        test = (  # the test that was run (paired_test turns to McNemar on 0/1 pass rates)
            itt.tests[0].name
            if itt is not None
            else ("exact McNemar" if self.binary else "paired t on per-problem pass rates")
        )
        ns = self.n_samples
        per = (
            f"{ns['with']} sample{'s' * (ns['with'] > 1)}"
            if ns["with"] == ns["without"]
            else f"{ns['with']} / {ns['without']} samples"
        )
        default = (
            f"{self.models['with']}: accuracy with vs without reasoning ({per} per problem; {test})"
        )
        _set_wrapped_title(ax, title if title is not None else default)
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` result file (:mod:`reasoning_circuits._store`: kind, format
        version, checksum; no pickle)."""
        header = {
            "kind_of_answers": self.kind,
            "models": dict(self.models),
            "modes": dict(self.modes),
            "n_samples": dict(self.n_samples),
            "sets": {k: v.to_dict() for k, v in self.sets.items()},
            "groups": [g.to_dict() for g in self.groups],
            "metadata": {k: dict(v) for k, v in self.metadata.items()},
            "fields": list(self.fields),
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "min_group": self.min_group,
        }
        o = self.outcomes
        arrays = {
            "arm": np.array([x.arm for x in o], dtype=str),
            "id": np.array([x.id for x in o], dtype=str),
            "sample": np.array([x.sample for x in o], dtype=np.int64),
            "flags": np.array(
                [[x.finished, x.well_formed, x.extracted, x.correct] for x in o], dtype=bool
            ).reshape(len(o), 4),
            "reason": np.array([x.reason for x in o], dtype=str),
            "answer": np.array([x.answer for x in o], dtype=str),
            "detail": np.array([x.detail for x in o], dtype=str),
        }
        return save_npz(Path(path), _KIND, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Evaluation:
        """Read a file written by :meth:`save`."""
        h, a = load_npz(Path(path), _KIND)
        outcomes = tuple(
            Outcome(
                arm=str(arm),  # type: ignore[arg-type]
                id=str(pid),
                sample=int(sample),
                finished=bool(flags[0]),
                well_formed=bool(flags[1]),
                extracted=bool(flags[2]),
                correct=bool(flags[3]),
                reason=str(reason),  # type: ignore[arg-type]
                answer=str(answer),
                detail=str(detail),
            )
            for arm, pid, sample, flags, reason, answer, detail in zip(
                a["arm"], a["id"], a["sample"], a["flags"], a["reason"], a["answer"], a["detail"]
            )
        )
        return cls(
            h["kind_of_answers"],
            h["models"],
            h["modes"],
            {k: int(v) for k, v in h["n_samples"].items()},
            {k: SetResult.from_dict(v) for k, v in h["sets"].items()},
            tuple(GroupResult.from_dict(g) for g in h["groups"]),
            outcomes,
            h["metadata"],
            tuple(h["fields"]),
            float(h["confidence"]),
            int(h["n_resamples"]),
            int(h["seed"]),
            int(h["min_group"]),
        )


def _flat(r: SetResult) -> dict[str, Any]:
    nan = math.nan
    row: dict[str, Any] = {"n_problems": r.n_problems}
    for arm, acc in (("with", r.accuracy_with), ("without", r.accuracy_without)):
        row[f"acc_{arm}"] = nan if acc is None else acc.estimate
        row[f"acc_{arm}_low"] = nan if acc is None else acc.low
        row[f"acc_{arm}_high"] = nan if acc is None else acc.high
    d = None if r.difference is None else r.difference.difference
    row["difference"] = nan if d is None else d.estimate
    row["low"] = nan if d is None else d.low
    row["high"] = nan if d is None else d.high
    row["test"] = "" if r.difference is None else r.difference.tests[0].name
    row["p_value"] = r.p_value
    row["boot_low"] = nan if r.bootstrap is None else r.bootstrap.low
    row["boot_high"] = nan if r.bootstrap is None else r.bootstrap.high
    return row


def _set_rows(r: SetResult, modes: Mapping[Arm, str]) -> list[dict[str, Any]]:
    nan = math.nan
    rows = []
    arm: Arm
    for arm, acc, k in (
        ("with", r.accuracy_with, r.correct_with),
        ("without", r.accuracy_without, r.correct_without),
    ):
        rows.append(
            {
                "set": r.name,
                "arm": arm,
                "mode": modes[arm],
                "n_problems": r.n_problems,
                "correct": k,
                "estimate": nan if acc is None else acc.estimate,
                "low": nan if acc is None else acc.low,
                "high": nan if acc is None else acc.high,
                "method": "" if acc is None else acc.method,
                "test": "",
                "statistic": nan,
                "p_value": nan,
                "boot_low": nan,
                "boot_high": nan,
                "note": r.note,
            }
        )
    c = r.difference
    rows.append(
        {
            "set": r.name,
            "arm": "difference",
            "mode": f"{modes['with']} - {modes['without']}",
            "n_problems": r.n_problems,
            "correct": r.correct_with - r.correct_without,
            "estimate": nan if c is None else c.difference.estimate,
            "low": nan if c is None else c.difference.low,
            "high": nan if c is None else c.difference.high,
            "method": "" if c is None else c.difference.method,
            "test": "" if c is None else c.tests[0].name,
            "statistic": nan if c is None else c.tests[0].statistic,
            "p_value": r.p_value,
            "boot_low": nan if r.bootstrap is None else r.bootstrap.low,
            "boot_high": nan if r.bootstrap is None else r.bootstrap.high,
            "note": r.note,
        }
    )
    return rows


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------

_DEFAULT_FIELDS = ("subject", "level")


def evaluate(
    with_runs: Runs,
    without_runs: Runs,
    problems: Sequence[Any],
    *,
    kind: Kind | None = None,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    by: Sequence[str] | None = None,
    min_group: int = 5,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
) -> Evaluation:
    """Compare accuracy with and without reasoning on the same problems.

    Args:
        with_runs: records collected in mode ``"reasoning"`` (a :class:`RecordSet`, a sequence
            of :class:`TraceRecord`, or the JSONL file of :func:`collect_traces`).
        without_runs: records of the same problems in mode ``"empty"`` or ``"finished"``.
        problems: :class:`reasoning_circuits.datasets.Problem` values (``.id``, ``.gold``,
            ``.kind``, ``.metadata``); joined to the records on id. May hold more problems
            than the runs.
        kind: ``"math"`` or ``"gsm8k"`` (see :func:`reasoning_circuits.grading.grade`); None
            takes it from the problems.
        confidence: of every interval.
        n_resamples, seed: of the bootstrap intervals.
        by: metadata fields to break the results down by. None: ``("subject", "level")``
            where the problems have them (GSM8K has neither); named fields must exist.
        min_group: sets and groups with fewer problems get no statistics, only a note.
        timeout, workers: per-item math-verify timeout and worker processes for grading.

    Returns:
        An :class:`Evaluation`.

    Raises:
        EvaluationInputError: an empty arm, an arm mixing settings (mode, model, sampling) or
            repeating an ``(id, sample)``, unequal samples per problem, problem sets that
            differ between the arms, records whose id is not in ``problems`` or has no gold
            answer, or a ``kind`` that contradicts the problems.
        ValueError: an unknown ``kind`` (with a did-you-mean hint) or ``by`` field.
    """
    if kind is not None:
        check_option(kind, Kind, "kind")
    if isinstance(by, str):
        by = (by,)
    if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 1:
        raise ValueError(f"min_group must be a positive int, got {min_group!r}")
    arms = {
        "with": load_runs(with_runs, name="with_runs"),
        "without": load_runs(without_runs, name="without_runs"),
    }
    info = {arm: _check_arm(arms[arm], arm) for arm in ARMS}  # type: ignore[index]
    ids = _check_same_problems(arms)
    by_id = _check_problems(problems)
    unknown = ids["with"] - by_id.keys()
    if unknown:
        raise EvaluationInputError(
            f"{len(unknown)} of {len(ids['with'])} problem ids of the runs are not in problems "
            f"(e.g. {_examples(unknown)}), so they have no gold answer; pass the problems the "
            f"runs were collected on (problems holds e.g. {_examples(by_id)})"
        )
    no_gold = [pid for pid in ids["with"] if getattr(by_id[pid], "gold", None) is None]
    if no_gold:
        raise EvaluationInputError(
            f"{len(no_gold)} problems have no gold answer (e.g. {_examples(no_gold)}); "
            "open-ended tasks such as WildBench are scored with rc.judging.judge_runs"
        )
    problem_ids = sorted(ids["with"])
    kind = _resolve_kind([by_id[pid] for pid in problem_ids], kind)
    fields = _fields(by, [by_id[pid] for pid in problem_ids])
    settings = _Settings(
        stats._check_confidence(confidence),
        stats._check_resamples(n_resamples),
        int(seed),
        min_group,
        info["with"]["n_samples"] == 1 and info["without"]["n_samples"] == 1,
    )
    outcomes: list[Outcome] = []
    for arm in ARMS:
        records = sorted(arms[arm], key=lambda r: (r.id, r.sample))
        golds = [str(by_id[r.id].gold) for r in records]
        outcomes += _classify(records, golds, arm=arm, kind=kind, timeout=timeout, workers=workers)
    t = _table(outcomes, problem_ids)
    everything = np.ones(len(problem_ids), dtype=bool)
    sets = _set_results(t, everything, settings)
    metadata = {pid: {f: by_id[pid].metadata.get(f) for f in fields} for pid in problem_ids}
    return Evaluation(
        kind=kind,
        models={arm: info[arm]["model"] for arm in ARMS},
        modes={arm: info[arm]["mode"] for arm in ARMS},
        n_samples={arm: info[arm]["n_samples"] for arm in ARMS},
        sets=sets,
        groups=tuple(_breakdown(t, by_id, fields, settings)),
        outcomes=tuple(outcomes),
        metadata=metadata,
        fields=fields,
        confidence=settings.confidence,
        n_resamples=settings.n_resamples,
        seed=settings.seed,
        min_group=min_group,
    )


def _fields(by: Sequence[str] | None, problems: Sequence[Any]) -> tuple[str, ...]:
    def has(p: Any, name: str) -> bool:
        return getattr(p, "metadata", {}).get(name) is not None

    if by is None:
        return tuple(f for f in _DEFAULT_FIELDS if any(has(p, f) for p in problems))
    for name in by:
        if not isinstance(name, str):
            raise TypeError(f"by must name metadata fields (strings), got {name!r}")
        missing = [p.id for p in problems if not has(p, name)]
        if missing:
            available = sorted({k for p in problems for k in getattr(p, "metadata", {})})
            raise ValueError(
                f"by={name!r}: {len(missing)} of {len(problems)} problems have no metadata "
                f"field {name!r} (e.g. {_examples(missing)}); available fields: "
                + textwrap.shorten(", ".join(available) or "none", 200)
            )
    return tuple(by)
