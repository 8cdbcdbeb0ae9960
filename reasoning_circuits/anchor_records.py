"""Thought-anchor records in the PTS study's JSONL shape: export ours, read theirs.

The PTS "reasoning circuits" study (audited in the project's spec ``pts.md``) stores one JSON
object per anchor sentence with 32 fields (``model_id``, ``query``, ``sentence``,
``sentence_id``, ``prob_with_sentence``, ``prob_without_sentence``, ``prob_delta``,
``attention_entropy``, ``failure_mode``, ``arithmetic_errors``, ...). This module lets a user
load the study's files next to ours and write our results so the study's scripts can read
them:

* :func:`study_records` turns an :class:`~reasoning_circuits.anchors.AnchorSet` (plus the
  traces, and optionally diagnoses and attention statistics) into one dict per sentence with
  the study's field names and types, and our own fields beside them;
* :func:`write_study_records` appends such dicts to a JSONL file atomically and without
  duplicates;
* :func:`read_study_records` reads our files **and** the study's headerless files into a
  typed :class:`pandas.DataFrame` with a ``problem`` column for
  :func:`~reasoning_circuits.comparison.compare_models`.

What the fields mean here (and where that differs from the study)
----------------------------------------------------------------
* ``prob_with_sentence`` = P(correct | sentence kept), ``prob_without_sentence`` =
  P(correct | sentence replaced by a resampled, different sentence), ``prob_delta`` = their
  difference Δ, ``importance_score`` = ``|Δ|``, ``is_positive`` = ``Δ > 0`` (the study's
  label; it is the sign of Δ, not whether the reasoning is correct). Intervals are ours and sit
  beside them: ``p_kept_low/high``, ``p_replaced_low/high`` (Wilson), ``delta_low/high``
  (Newcombe), ``delta_p`` (Fisher's exact test), with the raw counts ``k_kept``, ``n_kept``,
  ``k_replaced``, ``n_replaced`` and ``n_rollouts`` (= ``n_kept``).
* One record per reasoning sentence, not only per anchor (the study kept ``|Δ| ≥ 0.2`` only,
  which at its k = 3 is about half of all sentences by chance). Filter with ``anchors_only``
  if the study's selection is wanted.
* ``sentence`` is the sentence's text stripped of surrounding whitespace; ``prefix_context``
  and ``suffix_context`` are **exact slices** of the trace's reasoning text before and after
  it, so ``prefix_context + sentence + suffix_context`` is the reasoning, character for
  character (the study re-joined its segments with spaces and lost punctuation and newlines).
  ``char_start``/``char_stop`` locate ``sentence`` in the trace's text.
* ``failure_mode``, ``error_type``, ``correction_suggestion`` and ``sentence_category`` come
  from :func:`reasoning_circuits.categories.diagnose`. ``computational_mistake`` is only given
  when :func:`~reasoning_circuits.verification.verify_arithmetic` finds a wrong claim;
  ``failure_mode`` also takes ``excessive_uncertainty`` (the study files that under
  ``logical_error``), and ``failure_heuristic``/``failure_rule`` say how a label was made.
  ``error_type`` uses the study's words: ``arithmetic_error``, ``contradiction``,
  ``excessive_uncertainty``, ``incomplete_reasoning``.
* ``arithmetic_errors`` lists every **wrong** claim as ``{expression, stated, correct,
  operator}``: ``stated``/``correct`` are the exact values as finite floats, or ``null``
  (division by zero, a value too large for a float); ``operator`` is ``+``, ``-``, ``*``,
  ``/`` or ``^`` when the expression uses one kind of operator, ``"mixed"`` when it uses
  several (the study only checked ``a op b = c``).
* ``verification_score`` is always ``null``. The study's score,
  ``0.7·[no error] + 0.3·(1 − entropy + focus)/2``, mixes a ground truth with an attention
  heuristic under arbitrary weights (spec §8), so we keep the two apart: ``verification_ok``
  is the ground truth (``true`` when the sentence makes arithmetic claims and all of them are
  right, ``false`` when one is wrong, ``null`` when it makes none), with ``n_claims`` and
  ``n_wrong_claims``; ``verification_method`` is ``"verify_arithmetic"`` when the sentence
  has claims, else ``null``.
* ``attention_entropy``/``attention_focus_score`` are the study's convention
  (:func:`~reasoning_circuits.receivers.study_sentence_statistics`: head- and layer-averaged
  pattern, ``H / (n ln n)``, Gini over all ``n²`` entries) when ``attention=`` is given, else
  ``null``, never the study's silent ``0.0``. Its confound is stored beside it:
  ``attention_sink`` (the averaged pattern's mass on position 0) and ``attention_n`` (the
  matrix size, on which the entropy's ceiling depends).
* Not computed here, written empty as the study does when they are skipped:
  ``sentence_embedding`` and ``alternatives_embeddings`` (``[]``), ``causal_dependencies``,
  ``causal_dependents``, ``dependency_sentences`` (``[]``; the study's were keyword
  heuristics), ``logical_relationship`` (``null``). ``alternatives_tested`` lists the accepted
  replacement sentences (``[]`` when none; the study wrote a placeholder string).
* ``query`` is ``trace.metadata["question"]``, else the exact prompt
  (``metadata["prompt"]``, else the trace's prompt text); ``dataset_item_id`` is
  ``metadata["id"]`` (the problem id), else ``""``. ``full_reasoning_trace`` is the generated
  text from ``<think>`` on, not cut at 3000 characters.
* ``timestamp`` is local time, ``%Y-%m-%dT%H:%M:%S``, as in the study.

Files
-----
Our files start with a header line ``{"kind": "StudyRecords", "format_version": 1}``; the
study's files have none (and may hold the non-standard tokens ``NaN``, ``Infinity``,
``-Infinity``). :func:`read_study_records` accepts both. Records are unique by
``(model_id, problem, trace_id, sentence_id)``, where ``problem`` is ``dataset_item_id`` (or
``query`` when that is empty) and ``trace_id`` is ours (absent from the study's files, whose
key is therefore the study's own ``(model, problem, sentence index)``; with several sampled
traces per problem the trace id keeps them apart). Writing is append-only, one ``os.write`` of
one complete line followed by ``fsync``; a rerun skips records already in the file and refuses
a *different* record under an existing key (:class:`StudyRecordConflictError`); a line cut
by a crash is dropped when the file is next opened. NaN and infinity are written as ``null``.

The study's files hold exact duplicates (its periodic save added the first ten anchors of each
query twice, spec §2.8 and §6): :func:`read_study_records` drops them and warns with their
count.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reasoning_circuits.anchors import AnchorSet, SentenceImportance, _trace_id
from reasoning_circuits.categories import SentenceDiagnosis, TraceDiagnosis, diagnose
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.trace import Trace
from reasoning_circuits.verification import ArithmeticClaim

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "OUR_FIELDS",
    "STUDY_FIELDS",
    "StudyRecordConflictError",
    "claim_operator",
    "read_study_records",
    "record_key",
    "study_records",
    "write_study_records",
]

KIND = "StudyRecords"
FORMAT_VERSION = 1
"""Version of our file layout (the header line); the study's files have no header."""

STUDY_FIELDS: tuple[str, ...] = (
    "model_id",
    "query",
    "sentence",
    "sentence_id",
    "prefix_context",
    "prob_with_sentence",
    "prob_without_sentence",
    "prob_delta",
    "task_type",
    "suffix_context",
    "full_reasoning_trace",
    "sentence_embedding",
    "alternatives_embeddings",
    "causal_dependencies",
    "causal_dependents",
    "logical_relationship",
    "failure_mode",
    "error_type",
    "correction_suggestion",
    "verification_score",
    "verification_method",
    "arithmetic_errors",
    "attention_entropy",
    "attention_focus_score",
    "importance_score",
    "is_positive",
    "sentence_category",
    "alternatives_tested",
    "dependency_sentences",
    "dataset_id",
    "dataset_item_id",
    "timestamp",
)
"""The study's 32 fields, in its order (spec §7)."""

OUR_FIELDS: tuple[str, ...] = (
    "trace_id",
    "problem_id",
    "sample",
    "char_start",
    "char_stop",
    "k_kept",
    "n_kept",
    "k_replaced",
    "n_replaced",
    "n_rollouts",
    "p_kept_low",
    "p_kept_high",
    "p_replaced_low",
    "p_replaced_high",
    "delta_low",
    "delta_high",
    "delta_p",
    "confidence",
    "removal_importance",
    "suppression_importance",
    "answer_kl",
    "verification_ok",
    "n_claims",
    "n_wrong_claims",
    "failure_rule",
    "failure_heuristic",
    "attention_sink",
    "attention_n",
)
"""Our fields, written beside the study's."""

VOLATILE_FIELDS = frozenset({"timestamp"})
"""Fields ignored when deciding whether two records under one key are the same record."""

_FLOAT_COLUMNS = (
    "prob_with_sentence",
    "prob_without_sentence",
    "prob_delta",
    "verification_score",
    "attention_entropy",
    "attention_focus_score",
    "importance_score",
    "p_kept_low",
    "p_kept_high",
    "p_replaced_low",
    "p_replaced_high",
    "delta_low",
    "delta_high",
    "delta_p",
    "confidence",
    "removal_importance",
    "suppression_importance",
    "answer_kl",
    "attention_sink",
)
_INT_COLUMNS = (
    "sentence_id",
    "sample",
    "char_start",
    "char_stop",
    "k_kept",
    "n_kept",
    "k_replaced",
    "n_replaced",
    "n_rollouts",
    "n_claims",
    "n_wrong_claims",
    "attention_n",
)
_BOOL_COLUMNS = ("is_positive", "verification_ok", "failure_heuristic")
_STR_COLUMNS = (
    "model_id",
    "query",
    "sentence",
    "prefix_context",
    "suffix_context",
    "task_type",
    "full_reasoning_trace",
    "logical_relationship",
    "failure_mode",
    "error_type",
    "correction_suggestion",
    "verification_method",
    "sentence_category",
    "dataset_id",
    "dataset_item_id",
    "timestamp",
    "trace_id",
    "problem_id",
    "failure_rule",
)

_ERROR_TYPE = {
    "computational_mistake": "arithmetic_error",
    "logical_error": "contradiction",
    "excessive_uncertainty": "excessive_uncertainty",
    "missing_step": "incomplete_reasoning",
}


class StudyRecordConflictError(ValueError):
    """A record differs from the one already stored (or given) under the same key."""


# --------------------------------------------------------------------------- JSON safety
def _finite(value: Any) -> Any:
    """A JSON-safe copy: NaN and infinity become None, NumPy scalars Python numbers."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_finite(v) for v in value]
    return value


def _dumps(data: Mapping[str, Any]) -> bytes:
    text = json.dumps(_finite(dict(data)), ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _number(value: Fraction | str) -> float | None:
    """An exact value as a finite float, or None (undefined, or too large for a float)."""
    if isinstance(value, str):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------- operators
_OPERATORS = (
    (re.compile(r"\\times|\\cdot|[×·*]"), "*"),
    (re.compile(r"\\div|\\frac|[÷/]"), "/"),
    (re.compile(r"\^|\*\*"), "^"),
    (re.compile(r"\+"), "+"),
)
# a minus is an operator when an operand stands before it (else it is a sign)
_MINUS = re.compile(r"(?<=[\w)\]}%$.])\s*[-−–]")


def claim_operator(expression: str) -> str:
    """The study's ``operator`` of a claim: ``+ - * / ^`` when ``expression`` uses one kind,
    ``"mixed"`` for several, ``""`` for none (a bare number or a single value)."""
    found = set()
    text = expression.replace("**", "^")
    for pattern, name in _OPERATORS:
        if pattern.search(text):
            found.add(name)
    if _MINUS.search(text):
        found.add("-")
    if not found:
        return ""
    return found.pop() if len(found) == 1 else "mixed"


def _arithmetic_error(claim: ArithmeticClaim) -> dict[str, Any]:
    return {
        "expression": claim.expression,
        "stated": _number(claim.stated_value),
        "correct": _number(claim.correct_value),
        "operator": claim_operator(claim.expression),
    }


# --------------------------------------------------------------------------- export
def _trace_map(anchors: AnchorSet, traces: Any) -> dict[str, Trace]:
    ids = list(dict.fromkeys(r.trace_id for r in anchors.records))
    if isinstance(traces, Trace):
        traces = [traces]
    if isinstance(traces, Mapping):
        found = {str(k): v for k, v in traces.items()}
    elif isinstance(traces, Sequence) and all(isinstance(t, Trace) for t in traces):
        found = {}
        for trace in traces:
            found[_trace_id(trace)] = trace
            for key in ("trace_id", "id"):
                if key in trace.metadata:
                    found.setdefault(str(trace.metadata[key]), trace)
        if len(traces) == 1 and len(ids) == 1:
            found.setdefault(ids[0], traces[0])
    else:
        raise TypeError(
            "traces must be a Trace, a sequence of Traces or a mapping trace_id -> Trace, "
            f"got {type(traces).__name__}"
        )
    missing = [t for t in ids if t not in found]
    if missing:
        raise ValueError(
            f"no trace for trace id(s) {missing}; pass the traces the AnchorSet was measured "
            "on, as a mapping {trace_id: trace} if thought_anchors was given trace_id="
        )
    return found


def _per_trace(value: Any, tid: str, what: str, single: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(tid)
    if single:
        return value
    raise TypeError(
        f"{what} must be a mapping trace_id -> {what} when the AnchorSet holds several traces"
    )


def _stripped_span(trace: Trace, index: int) -> tuple[int, int]:
    segment = trace.sentences[index]
    raw = trace.text_of(segment)
    start = segment.char_start + (len(raw) - len(raw.lstrip()))
    stop = segment.char_stop - (len(raw) - len(raw.rstrip()))
    return start, max(start, stop)


def _attention_rows(frame: Any, tid: str) -> dict[int, Mapping[str, Any]]:
    if frame is None:
        return {}
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            "attention must be the DataFrame of rc.receivers.study_sentence_statistics (or a "
            f"mapping trace_id -> such frames), got {type(frame).__name__}"
        )
    needed = {"sentence", "entropy"}
    if not needed <= set(frame.columns):
        raise ValueError(
            f"the attention frame of trace {tid} lacks {sorted(needed - set(frame.columns))}; "
            "it needs one row per sentence with 'sentence', 'entropy' and optionally 'gini', "
            "'sink' and 'n' (study_sentence_statistics gives these)"
        )
    return {int(row["sentence"]): row for row in frame.to_dict(orient="records")}


def _interval_fields(record: SentenceImportance) -> dict[str, Any]:
    nan = math.nan
    kept, replaced, comparison = record.p_kept, record.p_replaced, record.resampling
    delta = record.resampling_importance
    return {
        "prob_with_sentence": nan if kept is None else kept.estimate,
        "prob_without_sentence": nan if replaced is None else replaced.estimate,
        "prob_delta": delta,
        "importance_score": abs(delta),
        "is_positive": None if math.isnan(delta) else bool(delta > 0),
        "k_kept": record.k_kept,
        "n_kept": record.n_kept,
        "k_replaced": record.k_replaced,
        "n_replaced": record.n_replaced,
        "n_rollouts": record.n_kept,
        "p_kept_low": nan if kept is None else kept.low,
        "p_kept_high": nan if kept is None else kept.high,
        "p_replaced_low": nan if replaced is None else replaced.low,
        "p_replaced_high": nan if replaced is None else replaced.high,
        "delta_low": nan if comparison is None else comparison.difference.low,
        "delta_high": nan if comparison is None else comparison.difference.high,
        "delta_p": nan if comparison is None else comparison.p_value,
        "confidence": record.confidence,
        "removal_importance": record.removal_importance,
        "suppression_importance": record.suppression_importance,
        "answer_kl": record.answer_kl,
    }


def _diagnosis_fields(d: SentenceDiagnosis | None) -> dict[str, Any]:
    if d is None:
        return {
            "failure_mode": None,
            "error_type": None,
            "correction_suggestion": None,
            "failure_rule": None,
            "failure_heuristic": None,
            "sentence_category": None,
            "arithmetic_errors": [],
            "verification_method": None,
            "verification_ok": None,
            "n_claims": None,
            "n_wrong_claims": None,
        }
    wrong = [c for c in d.claims if not c.ok]
    return {
        "failure_mode": d.failure_mode,
        "error_type": None if d.failure_mode is None else _ERROR_TYPE[d.failure_mode],
        "correction_suggestion": d.correction,
        "failure_rule": d.failure_rule,
        "failure_heuristic": None if d.failure_mode is None else d.failure_heuristic,
        "sentence_category": d.category,
        "arithmetic_errors": [_arithmetic_error(c) for c in wrong],
        "verification_method": "verify_arithmetic" if d.claims else None,
        "verification_ok": (not wrong) if d.claims else None,
        "n_claims": len(d.claims),
        "n_wrong_claims": len(wrong),
    }


def study_records(
    anchors: AnchorSet,
    traces: Trace | Sequence[Trace] | Mapping[str, Trace],
    *,
    model_id: str,
    dataset_id: str = "",
    diagnoses: TraceDiagnosis | Mapping[str, TraceDiagnosis] | None = None,
    attention: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
    modulus: int | None = None,
    anchors_only: bool = False,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """One dict per sentence record of ``anchors``, in the study's field names and types.

    Args:
        anchors: the result of :func:`~reasoning_circuits.anchors.thought_anchors` (one or
            several traces; records without resampling get ``null`` probabilities).
        traces: the traces measured: a Trace, a sequence (matched by the default trace id,
            a hash of the ids, or ``metadata["trace_id"]``/``["id"]``) or a mapping
            ``{trace_id: trace}``.
        model_id: the model's name (the study's ``--model``).
        dataset_id: the dataset's name (the study's ``--dataset``).
        diagnoses: :func:`~reasoning_circuits.categories.diagnose` results (one, or a mapping
            per trace id); default: ``diagnose(trace, modulus=modulus)``.
        attention: per-sentence attention statistics in the study's convention,
            :func:`~reasoning_circuits.receivers.study_sentence_statistics` (one frame, or a
            mapping per trace id); default none (``null`` entropy and focus).
        modulus: passed to ``diagnose`` (e.g. 10 for the tiny reasoner's mod-10 steps).
        anchors_only: keep only the study's anchors, ``|Δ| ≥ 0.2`` (flawed at small k).
        timestamp: the ``timestamp`` of every record (default: now, local time).

    Returns:
        A list of dicts with the 32 fields of :data:`STUDY_FIELDS` and ours
        (:data:`OUR_FIELDS`); non-finite numbers are NaN here and ``null`` in files.

    Raises:
        ValueError: a record's trace is missing, its text does not match the trace's
            sentence, or a diagnosis/attention frame does not cover the trace's sentences.
    """
    if not isinstance(anchors, AnchorSet):
        raise TypeError(f"anchors must be an AnchorSet, got {type(anchors).__name__}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError("model_id must be a non-empty str (the model's name)")
    by_id = _trace_map(anchors, traces)
    single = len({r.trace_id for r in anchors.records}) == 1
    stamp = timestamp if timestamp is not None else time.strftime("%Y-%m-%dT%H:%M:%S")
    diagnosed: dict[str, TraceDiagnosis] = {}
    out: list[dict[str, Any]] = []
    for record in anchors.records:
        tid = record.trace_id
        trace = by_id[tid]
        if not 0 <= record.sentence < len(trace.sentences):
            raise ValueError(
                f"record {record.key} names sentence {record.sentence}, but the trace has "
                f"{len(trace.sentences)}; pass the trace the AnchorSet was measured on"
            )
        a, b = _stripped_span(trace, record.sentence)
        sentence = trace.text[a:b]
        if sentence != record.text:
            raise ValueError(
                f"record {record.key} has text {record.text!r} but the trace's sentence "
                f"{record.sentence} is {sentence!r}; pass the trace the AnchorSet was "
                "measured on"
            )
        if tid not in diagnosed:
            given = _per_trace(diagnoses, tid, "TraceDiagnosis", single)
            diagnosed[tid] = given if given is not None else diagnose(trace, modulus=modulus)
            if len(diagnosed[tid]) != len(trace.sentences):
                raise ValueError(
                    f"the diagnosis of trace {tid} has {len(diagnosed[tid])} sentences, the "
                    f"trace {len(trace.sentences)}; diagnose the same trace"
                )
        attention_rows = _attention_rows(_per_trace(attention, tid, "DataFrame", single), tid)
        if attention_rows and record.sentence not in attention_rows:
            raise ValueError(
                f"the attention frame of trace {tid} has no sentence {record.sentence}"
            )
        att = attention_rows.get(record.sentence, {})
        reasoning = trace["reasoning"]
        metadata = trace.metadata
        question = metadata.get("question", metadata.get("prompt"))
        fields = _interval_fields(record)
        if anchors_only and not fields["importance_score"] >= 0.2:
            continue
        diag = _diagnosis_fields(diagnosed[tid][record.sentence])
        problem_id = metadata.get("id")
        row: dict[str, Any] = {
            "model_id": model_id,
            "query": str(question) if question is not None else trace.text_of("prompt"),
            "sentence": sentence,
            "sentence_id": record.sentence,
            "prefix_context": trace.text[reasoning.char_start : a],
            "prob_with_sentence": fields["prob_with_sentence"],
            "prob_without_sentence": fields["prob_without_sentence"],
            "prob_delta": fields["prob_delta"],
            "task_type": "generic",
            "suffix_context": trace.text[b : reasoning.char_stop],
            "full_reasoning_trace": trace.text[trace["think_open"].char_start :],
            "sentence_embedding": [],
            "alternatives_embeddings": [],
            "causal_dependencies": [],
            "causal_dependents": [],
            "logical_relationship": None,
            "failure_mode": diag["failure_mode"],
            "error_type": diag["error_type"],
            "correction_suggestion": diag["correction_suggestion"],
            "verification_score": None,
            "verification_method": diag["verification_method"],
            "arithmetic_errors": diag["arithmetic_errors"],
            "attention_entropy": _float_or_nan(att.get("entropy")),
            "attention_focus_score": _float_or_nan(att.get("gini")),
            "importance_score": fields["importance_score"],
            "is_positive": fields["is_positive"],
            "sentence_category": diag["sentence_category"],
            "alternatives_tested": list(record.alternatives),
            "dependency_sentences": [],
            "dataset_id": dataset_id,
            "dataset_item_id": "" if problem_id is None else str(problem_id),
            "timestamp": stamp,
            # ours
            "trace_id": tid,
            "problem_id": None if problem_id is None else str(problem_id),
            "sample": metadata.get("sample"),
            "char_start": a,
            "char_stop": b,
        }
        for name in OUR_FIELDS:
            if name in fields:
                row[name] = fields[name]
            elif name in diag:
                row[name] = diag[name]
        row["attention_sink"] = _float_or_nan(att.get("sink"))
        row["attention_n"] = None if att.get("n") is None else int(att["n"])
        out.append(row)
    return out


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------- keys
def _problem_of(record: Mapping[str, Any]) -> str | None:
    item = record.get("dataset_item_id")
    if item not in (None, ""):
        return str(item)
    query = record.get("query")
    return None if query is None else str(query)


def record_key(record: Mapping[str, Any]) -> tuple[str, str, str | None, int]:
    """``(model_id, problem, trace_id, sentence_id)``: what a record is unique by.

    ``problem`` is ``dataset_item_id``, or ``query`` when that is empty; ``trace_id`` is
    None for the study's records (which have one trace per problem).
    """
    model, sentence = record.get("model_id"), record.get("sentence_id")
    problem = _problem_of(record)
    if model is None or problem is None or sentence is None:
        raise ValueError(
            "a record needs model_id, sentence_id and dataset_item_id or query to be keyed; "
            f"got model_id={model!r}, sentence_id={sentence!r}, problem={problem!r}"
        )
    trace = record.get("trace_id")
    return (str(model), problem, None if trace is None else str(trace), int(sentence))


def _comparable(record: Mapping[str, Any]) -> Any:
    """The record as stored (JSON round trip), without the volatile fields."""
    plain = json.loads(_dumps(record))
    return {k: v for k, v in plain.items() if k not in VOLATILE_FIELDS}


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    ca, cb = _comparable(a), _comparable(b)
    return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))


# --------------------------------------------------------------------------- writing
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _parse_constant(token: str) -> None:
    return None  # the study's NaN, Infinity, -Infinity


def _parse_file(data: bytes, path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """``(header or None, records, bytes of complete lines)``; a last line that is cut off
    (no newline, not JSON) is left out."""
    lines = data.split(b"\n")
    complete = len(data)
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    elif lines:
        try:
            json.loads(lines[-1], parse_constant=_parse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = len(data) - len(lines[-1])
            lines = lines[:-1]
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line, parse_constant=_parse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FileFormatError(
                f"{path} line {number} is not valid JSON ({err}); only the last line of a "
                "record file can be incomplete, so this file was edited or damaged"
            ) from err
        if not isinstance(item, dict):
            raise FileFormatError(f"{path} line {number} is not a JSON object")
        if number == 1 and "kind" in item:
            if item.get("kind") != KIND:
                raise FileFormatError(
                    f"{path} holds a {item.get('kind')!r} file, not study records"
                )
            version = int(item.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise FileFormatError(
                    f"{path} uses format version {version}, newer than this release reads "
                    f"({FORMAT_VERSION}); upgrade reasoning_circuits"
                )
            header = item
            continue
        records.append(item)
    return header, records, complete


def write_study_records(
    records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *, fsync: bool = True
) -> int:
    """Append ``records`` to a JSONL file in the study's shape; returns how many were new.

    A new file gets a header line ``{"kind": "StudyRecords", "format_version": 1}``. The file
    is locked while written; a last line cut off by a crash is removed first. A record whose
    key (:func:`record_key`) is already in the file, or earlier in ``records``, is skipped
    when it is the same record (``timestamp`` aside) and refused when it differs; nothing is
    written if any record is refused. Each record is one ``os.write`` of one line, then
    ``fsync`` (``fsync=False`` skips it). NaN and infinity are written as ``null``.

    Raises:
        StudyRecordConflictError: a different record under an existing key.
        FileFormatError: the file is not ours (e.g. a headerless study file: write to a new
            file) or is damaged.
        ValueError: a record lacks the key fields.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise BlockingIOError(
                    f"{target} is being written by another process (it holds the lock)"
                ) from err
        chunks, offset = [], 0
        while chunk := os.pread(fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        header, stored, complete = _parse_file(data, target)
        if stored and header is None:
            raise FileFormatError(
                f"{target} holds records without our header (a file written by the study?); "
                "read it with read_study_records and write ours to a new file"
            )
        known: dict[tuple[str, str, str | None, int], Mapping[str, Any]] = {}
        for item in stored:
            known.setdefault(record_key(item), item)
        new: list[Mapping[str, Any]] = []
        for record in records:
            if not isinstance(record, Mapping):
                raise TypeError(f"records must be dicts, got {type(record).__name__}")
            key = record_key(record)
            if key in known:
                differ = _differing(known[key], record)
                if differ:
                    raise StudyRecordConflictError(
                        f"a different record for {key} is already in {target} or earlier in "
                        f"the records (fields {differ} differ); nothing was written. Write to "
                        "another file, or remove the old record if it is wrong"
                    )
                continue
            known[key] = record
            new.append(record)
        lines = [_dumps(r) for r in new]
        if complete < len(data):
            os.ftruncate(fd, complete)  # a line cut by a crash
        elif data and not data.endswith(b"\n") and header is not None:
            _write_all(fd, b"\n")  # a complete last line written without its newline
        if header is None:
            if complete > 0:
                os.ftruncate(fd, 0)  # only blank lines or a cut header
            _write_all(fd, _dumps({"kind": KIND, "format_version": FORMAT_VERSION}))
            if fsync:
                os.fsync(fd)
        for line in lines:
            _write_all(fd, line)
            if fsync:
                os.fsync(fd)
        return len(lines)
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- reading
def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for name in _FLOAT_COLUMNS:
        if name in frame.columns:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    for name in _INT_COLUMNS:
        if name in frame.columns:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
    for name in _BOOL_COLUMNS:
        if name in frame.columns:
            frame[name] = frame[name].astype("boolean")
    for name in _STR_COLUMNS:
        if name in frame.columns:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


def _study_verification_ok(record: Mapping[str, Any]) -> bool | None:
    """For a study record: did its verifier run (``verification_method`` set) and find no
    arithmetic error? None when it did not run."""
    if record.get("verification_method") is None:
        return None
    return not record.get("arithmetic_errors")


def read_study_records(path: str | os.PathLike[str], *, dedupe: bool = True) -> pd.DataFrame:
    """Read our record files and the study's headerless ones into a typed DataFrame.

    One row per record. Every field of :data:`STUDY_FIELDS` is a column (missing ones are
    ``None``/NaN); ours are added when present. Numbers are ``float64`` (NaN for ``null``,
    and for the study's ``NaN``/``Infinity`` tokens), counts and ``sentence_id`` nullable
    ``Int64``, flags nullable ``boolean``; lists stay Python lists (``arithmetic_errors``
    entries have ``None`` for a non-finite value). Added columns: ``problem``
    (``dataset_item_id``, or ``query`` when empty: the unit of comparison) and, for study
    files, ``verification_ok`` (whether its verifier ran and found no error). A last line cut
    off by a crash is dropped with a warning.

    ``dedupe=True`` drops exact duplicates (the study's periodic save wrote some records
    twice) and warns with their count; records that share a key (:func:`record_key`) but
    differ (e.g. two runs appended to one file) keep the first, with another warning.
    ``frame.attrs["format"]`` is ``"reasoning_circuits"`` or ``"study"``.

    Raises:
        FileFormatError: a line in the middle is not JSON, or a header of another kind.
    """
    source = Path(path)
    data = source.read_bytes()
    header, records, complete = _parse_file(data, source)
    if complete < len(data):
        warnings.warn(
            f"{source}: the last line is incomplete (a write cut off); it was left out",
            UserWarning,
            stacklevel=2,
        )
    study = header is None
    if study:
        for record in records:
            record.setdefault("verification_ok", _study_verification_ok(record))
    if dedupe and records:
        seen: dict[str, int] = {}
        kept: list[dict[str, Any]] = []
        exact = 0
        for record in records:
            text = json.dumps(record, sort_keys=True)
            if text in seen:
                exact += 1
                continue
            seen[text] = 1
            kept.append(record)
        by_key: dict[Any, dict[str, Any]] = {}
        conflicting = 0
        for record in kept:
            try:
                key = record_key(record)
            except ValueError:
                key = ("", "", f"unkeyed-{len(by_key)}", -1)
            if key in by_key:
                conflicting += 1
                continue
            by_key[key] = record
        if exact:
            warnings.warn(
                f"{source}: dropped {exact} exact duplicate record(s) (the study's periodic "
                "save wrote some anchors twice); pass dedupe=False to keep them",
                UserWarning,
                stacklevel=2,
            )
        if conflicting:
            warnings.warn(
                f"{source}: dropped {conflicting} record(s) whose (model, problem, sentence) "
                "key was already taken by a different record (kept the first; several runs "
                "appended to one file?)",
                UserWarning,
                stacklevel=2,
            )
        records = list(by_key.values())
    columns = list(STUDY_FIELDS) + [
        c for c in dict.fromkeys(k for r in records for k in r) if c not in STUDY_FIELDS
    ]
    frame = pd.DataFrame.from_records(records, columns=columns) if records else None
    if frame is None:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = _typed(frame)
    frame["problem"] = [_problem_of(r) for r in records] if records else pd.Series(dtype=object)
    frame.attrs["format"] = "study" if study else "reasoning_circuits"
    frame.attrs["header"] = dict(header) if header else {}
    return frame
