"""Judge open-ended answers (WildBench) with and without reasoning, paired by task.

WildBench tasks have no gold answer: each task comes with a *checklist* of what a good
response does, and an LLM judge reads the conversation, the checklist and a response, lists
strengths and weaknesses, and gives a score from 1 to 10. R2A compared the scores of answers
written with and without reasoning (spec §2, WildBench).

* :func:`judge_prompt` builds the judge's prompt from a problem (its conversation history,
  the final user turn and ``metadata["checklist"]``) and a response. Only the **answer
  segment** reaches the judge (:func:`reasoning_circuits.grading.answer_segment`): the
  reasoning is hidden, as in R2A, so the judge scores what a user would read. A response
  whose reasoning never closed has no answer: :func:`judge_prompt` **refuses** it
  (:class:`UnjudgeableResponseError`, ``reason="unfinished"``). :func:`judge_runs`, which
  sees the collection records, tells the two causes apart without asking the judge: a record
  stopped by its token limit is ``"unfinished"``, one that ended (EOS) without closing its
  reasoning is ``"malformed"``.
* The judge is any callable ``judge(prompt: str) -> str`` you supply (an API client, a local
  model); none is bundled.
* :func:`parse_score` reads the score from the judge's reply (see its docstring for the
  accepted forms); a reply with no score, several different scores or a score outside 1–10
  gives None, and :func:`read_score` says why.
* :func:`judge_runs` scores every record of both arms (unparseable replies are asked again
  ``retries`` times, then counted as ``"unparseable"``) and compares the arms per task,
  overall and per task area (WildBench's ``primary_tag`` grouped as in R2A, see
  :data:`TASK_AREAS`), with :func:`reasoning_circuits.stats.paired_test` (interval of the
  mean score difference; paired t, with Wilcoxon as second test) and Holm-adjusted p over
  the areas. With several samples per task, tasks are the units (mean score per task).

Scores of responses that could not be judged (unfinished, malformed, unparseable) are left
out by default (``missing="drop"``: R2A's choice, a valid-set comparison); ``missing="lowest"``
scores them 1, the intention-to-treat view. An empty answer is scored 1 without asking the
judge (WildBench's rule for empty outputs).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reasoning_circuits import stats
from reasoning_circuits._options import check_option
from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.collection import TraceRecord
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.evaluation import (
    ARMS,
    EMPTY_ANSWER,
    Arm,
    EvaluationInputError,
    Runs,
    _check_arm,
    _check_problems,
    _check_same_problems,
    _examples,
    answer_text,
    load_runs,
)
from reasoning_circuits.grading import Think, answer_segment

__all__ = [
    "JUDGE_TEMPLATE",
    "SCORE_RANGE",
    "TASK_AREAS",
    "AreaResult",
    "JudgedResponse",
    "Judgement",
    "Missing",
    "ScoreReading",
    "Status",
    "UnjudgeableResponseError",
    "judge_prompt",
    "judge_runs",
    "parse_score",
    "read_score",
]

SCORE_RANGE = (1.0, 10.0)
"""The judge's scale: 1 (worst) to 10 (best), as in WildBench."""

Status = Literal["scored", "unparseable", "unfinished", "malformed", "empty"]
"""What happened to one response: scored by the judge; the judge's reply had no readable
score after all retries; the reasoning never closed (or no EOS); think tags repeated; an empty
answer (scored 1 without the judge)."""
Missing = Literal["drop", "lowest"]
"""Responses without a score: left out (``"drop"``) or scored 1 (``"lowest"``)."""

TASK_AREAS: Mapping[str, str] = {
    "advice seeking": "Info Seeking",
    "information seeking": "Info Seeking",
    "brainstorming": "Creative",
    "creative writing": "Creative",
    "editing": "Creative",
    "role playing": "Creative",
    "coding & debugging": "Coding & Analysis",
    "data analysis": "Coding & Analysis",
    "math": "Coding & Analysis",
    "planning": "Reasoning & Planning",
    "reasoning": "Reasoning & Planning",
}
"""WildBench ``primary_tag`` (lower case) → R2A's four task areas. Tags not listed keep their
own name as area (e.g. ``"Others"``)."""

JUDGE_TEMPLATE = """\
You are grading how well an AI assistant answered a user. Read the conversation, the \
checklist for this task and the assistant's response, then grade the response.

# Earlier conversation
{history}

# The user's request
{question}

# The assistant's response
{response}

# Checklist for this task
{checklist}

# How to grade
- Use the checklist as a guide to what a good response does; it need not be exhaustive.
- Judge the response only as the user would read it: correctness, helpfulness, relevance, \
clarity and completeness. Length alone is not a merit.
- List the response's strengths and weaknesses first, then give one score from 1 to 10:
  1-2: unhelpful, wrong or off-topic; 3-4: major problems; 5-6: acceptable with clear \
flaws; 7-8: good, minor flaws; 9-10: excellent, hard to improve.

Reply with a JSON object only, in this form:
{{"strengths": "...", "weaknesses": "...", "score": <an integer from 1 to 10>}}
"""
"""The default judge prompt (written for this library after WildBench's idea). Fields in
braces are filled by :func:`judge_prompt`; ``{{`` and ``}}`` stand for literal braces."""

_FIELDS = re.compile(r"\{\{|\}\}|\{(history|question|response|checklist)\}")
_KIND = "Judgement"


class UnjudgeableResponseError(ValueError):
    """A response has no answer a judge could read; ``reason`` is ``"unfinished"``,
    ``"malformed"`` or ``"empty"``."""

    def __init__(self, message: str, reason: Status) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# The prompt
# --------------------------------------------------------------------------------------------


def _history(problem: Any) -> str:
    turns = getattr(problem, "metadata", {}).get("history") or []
    if not turns:
        return "(none: this is the first turn)"
    return "\n\n".join(f"[{t.get('role', '?')}]\n{t.get('content', '')}" for t in turns)


def _checklist(problem: Any) -> str:
    items = getattr(problem, "metadata", {}).get("checklist") or []
    if isinstance(items, str):
        items = [items]
    if not items:
        return "(no checklist for this task: grade by the criteria below)"
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def _render(problem: Any, answer: str, template: str) -> str:
    values = {
        "history": _history(problem),
        "question": str(problem.question),
        "response": answer,
        "checklist": _checklist(problem),
    }

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    # one pass over the template: braces inside the response are never read as fields
    return _FIELDS.sub(fill, template)


def _check_template(template: str) -> None:
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    for name in ("question", "response"):
        if "{" + name + "}" not in template:
            raise ValueError(
                f"the judge template has no {{{name}}} field, so the judge would not see the "
                f"{name}; fields: {{history}}, {{question}}, {{response}}, {{checklist}}"
            )


def judge_prompt(
    problem: Any,
    response: str,
    *,
    think: Think = "required",
    template: str | None = None,
) -> str:
    """The judge's prompt for one response to ``problem``.

    Args:
        problem: a WildBench :class:`~reasoning_circuits.datasets.Problem` (``.question``;
            ``metadata["history"]`` and ``metadata["checklist"]`` when present).
        response: the model's completion (reasoning included or not); only the answer
            segment after ``</think>`` is shown to the judge, stripped of a trailing
            end-of-sequence marker.
        think: ``"required"`` for responses generated with reasoning (no ``</think>`` means
            the reasoning never ended); ``"optional"`` for responses generated without it.
        template: the prompt text with fields ``{history}``, ``{question}``, ``{response}``,
            ``{checklist}`` (``{{``/``}}`` for literal braces); default :data:`JUDGE_TEMPLATE`.

    Raises:
        UnjudgeableResponseError: the reasoning never closed (``reason="unfinished"``), the
            answer holds think tags (``"malformed"``), or the answer is empty (``"empty"``).
    """
    check_option(think, Think, "think")
    template = JUDGE_TEMPLATE if template is None else template
    _check_template(template)
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    segment = answer_segment(response, think=think)
    if segment is None:
        raise UnjudgeableResponseError(
            "the response's reasoning never closed with </think>, so it has no answer to judge "
            "(collect with a larger max_new_tokens; judge_runs counts such responses as "
            "'unfinished')",
            "unfinished",
        )
    answer, why = answer_text(segment, "finished")
    if answer is None:
        reason: Status = "empty" if why == EMPTY_ANSWER else "malformed"
        raise UnjudgeableResponseError(f"cannot judge this response: {why}", reason)
    return _render(problem, answer, template)


# --------------------------------------------------------------------------------------------
# Reading the score
# --------------------------------------------------------------------------------------------

ReadingReason = Literal[
    "json", "labelled", "fraction", "empty", "none", "ambiguous", "out_of_range"
]


@dataclass(frozen=True)
class ScoreReading:
    """What :func:`read_score` found: ``score`` (None when unreadable) and ``reason``:

    ``"json"``, ``"labelled"`` (``Score: 7``), ``"fraction"`` (``7/10``) when read;
    ``"empty"``, ``"none"`` (no score), ``"ambiguous"`` (different scores), ``"out_of_range"``
    (outside 1–10, or on another scale such as ``4/5``) when not. ``detail`` explains.
    """

    score: float | None
    reason: ReadingReason
    detail: str = ""


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_LABELLED = re.compile(
    r"(?<![A-Za-z])(?:\*\*|__)?(?:final |overall )?score(?:\*\*|__)?\s*[\"']?\s*(?:\*\*)?\s*"
    r"[:=]\s*(?:\*\*|__)?\s*[\"']?\s*(" + _NUMBER + r")(?:\s*(?:/|out of)\s*(" + _NUMBER + r"))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(
    r"(?<![\d.])(" + _NUMBER + r")\s*(?:/|out of)\s*10(?!\d|\.\d)",
    re.IGNORECASE,
)


def _objects(text: str) -> list[str]:
    """Candidate JSON objects: fenced blocks, then every balanced ``{...}`` span."""
    found = [m.group(1).strip() for m in _FENCE.finditer(text)]
    depth, start, quote = 0, -1, ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'" and depth:
            quote = c
        elif c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
        i += 1
    return found


def _as_score(value: Any) -> tuple[float | None, float | None]:
    """``(score, denominator)`` of a JSON value: a number, or a string like ``"8"``, ``"8/10"``."""
    if isinstance(value, bool):
        return None, None
    if isinstance(value, int | float):
        return float(value), None
    if isinstance(value, str):
        m = re.fullmatch(
            r"\s*(" + _NUMBER + r")\s*(?:(?:/|out of)\s*(" + _NUMBER + r"))?\s*", value
        )
        if m:
            return float(m.group(1)), None if m.group(2) is None else float(m.group(2))
    return None, None


def _json_scores(text: str) -> list[tuple[float, float | None]]:
    scores = []
    for candidate in _objects(text):
        data: Any = None
        try:
            data = json.loads(candidate)
        except ValueError:
            try:  # single quotes, Python literals: literal_eval evaluates literals only
                data = ast.literal_eval(candidate)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            if isinstance(key, str) and key.strip().lower() == "score":
                score, scale = _as_score(value)
                if score is not None:
                    scores.append((score, scale))
    return scores


def _decide(found: Sequence[tuple[float, float | None]], reason: ReadingReason) -> ScoreReading:
    values = sorted({s for s, _ in found})
    if len(values) > 1:
        return ScoreReading(None, "ambiguous", f"different scores {values}")
    score = values[0]
    scales = {d for _, d in found if d is not None and d != SCORE_RANGE[1]}
    if scales:
        return ScoreReading(
            None, "out_of_range", f"score {score:g} on a scale of {sorted(scales)[0]:g}, not 10"
        )
    low, high = SCORE_RANGE
    if not (math.isfinite(score) and low <= score <= high):
        return ScoreReading(None, "out_of_range", f"score {score:g} is outside {low:g}-{high:g}")
    return ScoreReading(score, reason)


def read_score(text: str) -> ScoreReading:
    """Read a 1–10 score from a judge's reply, and say how (or why not).

    In order, the first rule that finds a score decides:

    1. ``"json"``: a JSON object with a ``"score"`` key (any case), anywhere in the text: in
       a ```` ```json ```` fence, with single quotes (``{'score': 7}``), followed by other
       text; the value may be a number or a string (``"8"``, ``"8/10"``).
    2. ``"labelled"``: ``Score: 7``, ``**Score**: 8.5``, ``score = 6``, ``"score": 9`` in
       a broken object, ``Final score: 7/10``.
    3. ``"fraction"``: ``7/10``, ``7 out of 10``.

    Within the deciding rule, several different values are ``"ambiguous"`` (repeats of one
    value are fine). A value outside 1–10, or on another scale (``Score: 4/5``), is
    ``"out_of_range"``. Nothing found: ``"none"``; a blank reply: ``"empty"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"a judge reply must be a str, got {type(text).__name__}")
    if not text.strip():
        return ScoreReading(None, "empty", "the reply is blank")
    found = _json_scores(text)
    if found:
        return _decide(found, "json")
    labelled = [
        (float(m.group(1)), None if m.group(2) is None else float(m.group(2)))
        for m in _LABELLED.finditer(text)
    ]
    if labelled:
        return _decide(labelled, "labelled")
    fractions = [(float(m.group(1)), None) for m in _FRACTION.finditer(text)]
    if fractions:
        return _decide(fractions, "fraction")
    return ScoreReading(None, "none", "no score found (no JSON score, 'Score: n' or 'n/10')")


def parse_score(text: str) -> float | None:
    """The 1–10 score in a judge's reply, or None (see :func:`read_score` for the forms
    accepted and the reason when None)."""
    return read_score(text).score


# --------------------------------------------------------------------------------------------
# Judging runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgedResponse:
    """One record of one arm and what the judge made of it.

    ``score`` is NaN unless ``status`` is ``"scored"`` or ``"empty"`` (1); ``attempts`` is the
    number of judge calls; ``output`` the judge's last reply; ``detail`` why a response was
    not scored.
    """

    arm: Arm
    id: str
    sample: int
    area: str
    status: Status
    score: float
    attempts: int
    output: str = ""
    detail: str = ""


@dataclass(frozen=True)
class AreaResult:
    """Mean judge score with and without reasoning on one area (``"all"`` = every task).

    Means and the difference (with − without) are over tasks (a task's score is the mean of
    its samples). None with a ``note`` when fewer than ``min_group`` tasks are scored in both
    arms. ``p_holm``: Holm-adjusted over the areas (NaN for ``"all"``).
    """

    area: str
    n_tasks: int
    mean_with: stats.Interval | None
    mean_without: stats.Interval | None
    difference: stats.Comparison | None
    p_holm: float = math.nan
    note: str = ""

    @property
    def p_value(self) -> float:
        return math.nan if self.difference is None else self.difference.p_value

    def to_dict(self) -> dict[str, Any]:
        def d(x: Any) -> Any:
            return None if x is None else x.to_dict()

        return {
            "area": self.area,
            "n_tasks": self.n_tasks,
            "mean_with": d(self.mean_with),
            "mean_without": d(self.mean_without),
            "difference": d(self.difference),
            "p_holm": None if math.isnan(self.p_holm) else self.p_holm,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AreaResult:
        def i(x: Any) -> stats.Interval | None:
            return None if x is None else stats.Interval.from_dict(x)

        diff = data["difference"]
        return cls(
            data["area"],
            int(data["n_tasks"]),
            i(data["mean_with"]),
            i(data["mean_without"]),
            None if diff is None else stats.Comparison.from_dict(diff),
            math.nan if data["p_holm"] is None else float(data["p_holm"]),
            data.get("note", ""),
        )


@dataclass(frozen=True)
class Judgement:
    """Result of :func:`judge_runs` (plain data): every judged response, the overall
    comparison and one per task area."""

    responses: tuple[JudgedResponse, ...]
    overall: AreaResult
    areas: tuple[AreaResult, ...]
    models: Mapping[str, str]
    modes: Mapping[str, str]
    missing: Missing
    confidence: float
    n_resamples: int
    seed: int

    def __repr__(self) -> str:
        o = self.overall
        status = Counter(r.status for r in self.responses)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status.items()))
        if o.difference is None:
            body = o.note
        else:
            assert o.mean_with is not None and o.mean_without is not None
            d = o.difference.difference
            body = (
                f"{o.mean_with.estimate:.2f} vs {o.mean_without.estimate:.2f}, diff "
                f"{d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] p={o.p_value:.3g}"
            )
        return (
            f"Judgement({self.modes['with']} vs {self.modes['without']}, {o.n_tasks} tasks "
            f"scored in both: {body}; {len(self.areas)} areas; responses: {counts})"
        )

    def to_frame(self) -> Any:
        """One row per area (``"all"`` first): ``area, n_tasks, mean_with, with_low,
        with_high, mean_without, ..., difference, low, high, test, p_value, p_holm, note``."""
        import pandas as pd

        nan = math.nan
        rows = []
        for a in (self.overall, *self.areas):
            row: dict[str, Any] = {"area": a.area, "n_tasks": a.n_tasks}
            for arm, m in (("with", a.mean_with), ("without", a.mean_without)):
                row[f"mean_{arm}"] = nan if m is None else m.estimate
                row[f"{arm}_low"] = nan if m is None else m.low
                row[f"{arm}_high"] = nan if m is None else m.high
            d = None if a.difference is None else a.difference.difference
            row["difference"] = nan if d is None else d.estimate
            row["low"] = nan if d is None else d.low
            row["high"] = nan if d is None else d.high
            row["test"] = "" if a.difference is None else a.difference.tests[0].name
            row["p_value"] = a.p_value
            row["p_holm"] = a.p_holm
            row["note"] = a.note
            rows.append(row)
        return pd.DataFrame(rows)

    def scores(self) -> Any:
        """One row per response: the :class:`JudgedResponse` fields."""
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.responses])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` result file (kind, format version, checksum; no pickle)."""
        rows = [
            {**r.__dict__, "score": None if math.isnan(r.score) else r.score}
            for r in self.responses
        ]
        header = {
            "responses": rows,
            "overall": self.overall.to_dict(),
            "areas": [a.to_dict() for a in self.areas],
            "models": dict(self.models),
            "modes": dict(self.modes),
            "missing": self.missing,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
        }
        return save_npz(Path(path), _KIND, header, {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Judgement:
        """Read a file written by :meth:`save`."""
        h, _ = load_npz(Path(path), _KIND)
        responses = tuple(
            JudgedResponse(**{**r, "score": math.nan if r["score"] is None else r["score"]})
            for r in h["responses"]
        )
        return cls(
            responses,
            AreaResult.from_dict(h["overall"]),
            tuple(AreaResult.from_dict(a) for a in h["areas"]),
            h["models"],
            h["modes"],
            h["missing"],
            float(h["confidence"]),
            int(h["n_resamples"]),
            int(h["seed"]),
        )


def _area_of(problem: Any, areas: Mapping[str, str]) -> str:
    tag = getattr(problem, "metadata", {}).get("primary_tag")
    if not tag:
        return "untagged"
    return areas.get(str(tag).strip().lower(), str(tag))


class _ReplyCache:
    """Judge replies kept in a JSONL file as they arrive, so a rerun calls the judge only for
    what is missing. Key: SHA-256 of the prompt and the attempt number. One write + flush +
    fsync per reply; a cut last line (a killed run) is dropped on load."""

    KIND = "JudgeReplies"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            data = self.path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            lines = complete.decode("utf-8").splitlines()
            header = json.loads(lines[0]) if lines else {}
            if not isinstance(header, dict) or header.get("kind") != self.KIND:
                raise FileFormatError(
                    f"{self.path} is not a judge reply cache (no {self.KIND!r} header); pass "
                    "another cache= path"
                )
            for line in lines[1:]:
                item = json.loads(line)
                self.replies[item["key"]] = item["reply"]
            if len(complete) < len(data):
                with open(self.path, "rb+") as handle:
                    handle.truncate(len(complete))
            self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        else:
            self.handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
            self._append({"kind": self.KIND, "format_version": 1})

    def _append(self, item: Mapping[str, Any]) -> None:
        self.handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def ask(self, judge: Callable[[str], str], prompt: str, attempt: int) -> str:
        key = f"{hashlib.sha256(prompt.encode()).hexdigest()}:{attempt}"
        if key not in self.replies:
            reply = judge(prompt)
            if isinstance(reply, str):  # anything else is refused by the caller
                self._append({"key": key, "reply": reply})
                self.replies[key] = reply
            return reply
        return self.replies[key]

    def close(self) -> None:
        self.handle.close()


def _judge_one(
    judge: Callable[[str], str],
    prompt: str,
    retries: int,
    where: str,
    cache: _ReplyCache | None = None,
) -> tuple[float | None, int, str, str]:
    reading = ScoreReading(None, "none")
    output = ""
    for attempt in range(1, retries + 2):
        try:
            output = judge(prompt) if cache is None else cache.ask(judge, prompt, attempt)
        except Exception as err:
            raise RuntimeError(f"the judge raised on {where} (attempt {attempt}): {err}") from err
        if not isinstance(output, str):
            raise TypeError(
                f"the judge returned a {type(output).__name__} for {where}; it must return the "
                "reply text (str)"
            )
        reading = read_score(output)
        if reading.score is not None:
            return reading.score, attempt, output, ""
    return None, retries + 1, output, f"{reading.reason}: {reading.detail}"


def _compare_area(
    area: str,
    with_scores: np.ndarray,
    without_scores: np.ndarray,
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
    min_group: int,
) -> AreaResult:
    n = with_scores.size
    if n < max(min_group, 2):
        return AreaResult(
            area,
            n,
            None,
            None,
            None,
            note=f"only {n} tasks scored in both arms (fewer than min_group={max(min_group, 2)})",
        )
    bounds = SCORE_RANGE
    means = [
        stats.mean_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed, bounds=bounds)
        for x in (with_scores, without_scores)
    ]
    difference = stats.paired_test(
        without_scores,
        with_scores,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        bounds=bounds,
    )
    return AreaResult(area, n, means[0], means[1], difference)


def judge_runs(
    problems: Sequence[Any],
    with_runs: Runs,
    without_runs: Runs,
    judge: Callable[[str], str],
    *,
    retries: int = 2,
    template: str | None = None,
    areas: Mapping[str, str] | None = None,
    exclude_tags: Sequence[str] = (),
    missing: Missing = "drop",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_group: int = 5,
    cache: str | os.PathLike[str] | None = None,
) -> Judgement:
    """Score every response of both arms with ``judge`` and compare them per task.

    Args:
        problems: WildBench problems (:func:`reasoning_circuits.datasets.load_wildbench`),
            joined to the records on id.
        with_runs, without_runs: records in mode ``"reasoning"`` and ``"empty"``/``"finished"``
            (record sets, sequences of records or JSONL paths), answering the same tasks.
        judge: ``judge(prompt) -> reply``; called once per response (more on retries).
        retries: extra calls when a reply has no readable score (then ``"unparseable"``).
        template: the judge prompt (see :func:`judge_prompt`; default :data:`JUDGE_TEMPLATE`).
        areas: ``primary_tag`` (lower case) → area; default :data:`TASK_AREAS`, R2A's four
            areas.
        exclude_tags: primary tags to leave out (R2A left out ``"Math"``).
        missing: ``"drop"`` (compare tasks scored in both arms) or ``"lowest"`` (unscored
            responses count as 1).
        confidence, n_resamples, seed: of the intervals.
        min_group: areas with fewer tasks get a note instead of statistics.
        cache: a JSONL file that keeps every judge reply as it arrives (keyed by the prompt
            and attempt): if the judge fails half-way (a rate limit, a killed job), rerun
            with the same ``cache`` and only the missing prompts are sent again.

    Raises:
        EvaluationInputError: the arms' problems differ, an arm mixes settings or repeats an
            ``(id, sample)``, or a record's id is not in ``problems``.
    """
    check_option(missing, Missing, "missing")
    # checked before any (possibly paid) judge call
    stats._check_confidence(confidence)
    stats._check_resamples(n_resamples)
    if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 1:
        raise ValueError(f"min_group must be an int >= 1, got {min_group!r}")
    template = JUDGE_TEMPLATE if template is None else template
    areas = TASK_AREAS if areas is None else areas
    _check_template(template)
    if not callable(judge):
        raise TypeError("judge must be a callable judge(prompt: str) -> str")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
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
            f"{len(unknown)} task ids of the runs are not in problems (e.g. "
            f"{_examples(unknown)}); pass the WildBench problems the runs were collected on"
        )
    if isinstance(exclude_tags, str):  # one tag, not its letters
        exclude_tags = (exclude_tags,)
    excluded = {t.strip().lower() for t in exclude_tags}
    keep = {
        pid
        for pid in ids["with"]
        if str(by_id[pid].metadata.get("primary_tag", "")).strip().lower() not in excluded
    }
    if not keep:
        raise EvaluationInputError(f"exclude_tags={list(exclude_tags)} leaves no task to judge")
    responses: list[JudgedResponse] = []
    replies = _ReplyCache(cache) if cache is not None else None
    try:
        for arm in ARMS:
            for r in sorted(arms[arm], key=lambda r: (r.id, r.sample)):
                if r.id in keep:
                    responses.append(
                        _judge_record(r, arm, by_id[r.id], judge, retries, template, areas, replies)  # type: ignore[arg-type]
                    )
    finally:
        if replies is not None:
            replies.close()
    task_ids = sorted(keep)
    scores = _task_scores(responses, task_ids, missing)
    area_of = {pid: _area_of(by_id[pid], areas) for pid in task_ids}
    settings: dict[str, Any] = {
        "confidence": stats._check_confidence(confidence),
        "n_resamples": stats._check_resamples(n_resamples),
        "seed": int(seed),
        "min_group": min_group,
    }
    both = ~np.isnan(scores["with"]) & ~np.isnan(scores["without"])
    overall = _compare_area("all", scores["with"][both], scores["without"][both], **settings)
    results = []
    for area in sorted(set(area_of.values())):
        rows = both & np.array([area_of[pid] == area for pid in task_ids])
        results.append(
            _compare_area(area, scores["with"][rows], scores["without"][rows], **settings)
        )
    adjusted = stats.adjust_pvalues([a.p_value for a in results] or [math.nan], method="holm")
    results = [
        AreaResult(a.area, a.n_tasks, a.mean_with, a.mean_without, a.difference, float(p), a.note)
        for a, p in zip(results, adjusted, strict=False)
    ]
    return Judgement(
        tuple(responses),
        overall,
        tuple(results),
        {arm: info[arm]["model"] for arm in ARMS},
        {arm: info[arm]["mode"] for arm in ARMS},
        missing,
        settings["confidence"],
        settings["n_resamples"],
        settings["seed"],
    )


def _judge_record(
    record: TraceRecord,
    arm: Arm,
    problem: Any,
    judge: Callable[[str], str],
    retries: int,
    template: str,
    areas: Mapping[str, str],
    replies: _ReplyCache | None = None,
) -> JudgedResponse:
    area = _area_of(problem, areas)
    base: dict[str, Any] = {"arm": arm, "id": record.id, "sample": record.sample, "area": area}
    if not record.finished:
        return JudgedResponse(
            **base, status="unfinished", score=math.nan, attempts=0,
            detail=f"stopped by {record.stop_reason} after {record.n_generated_tokens} tokens",
        )  # fmt: skip
    answer, why = answer_text(record.text, record.mode)
    if answer is None:
        if why == EMPTY_ANSWER:
            return JudgedResponse(**base, status="empty", score=1.0, attempts=0, detail=why)
        return JudgedResponse(**base, status="malformed", score=math.nan, attempts=0, detail=why)
    prompt = _render(problem, answer, template)
    score, attempts, output, detail = _judge_one(
        judge,
        prompt,
        retries,
        f"task {record.id!r} sample {record.sample} ({arm} reasoning)",
        replies,
    )
    if score is None:
        return JudgedResponse(
            **base, status="unparseable", score=math.nan, attempts=attempts, output=output,
            detail=detail,
        )  # fmt: skip
    return JudgedResponse(**base, status="scored", score=score, attempts=attempts, output=output)


def _task_scores(
    responses: Sequence[JudgedResponse], task_ids: list[str], missing: Missing
) -> dict[str, np.ndarray]:
    """Mean score per task per arm (NaN: no scored response and ``missing="drop"``)."""
    index = {pid: i for i, pid in enumerate(task_ids)}
    out: dict[str, np.ndarray] = {}
    for arm in ARMS:
        total, count = np.zeros(len(task_ids)), np.zeros(len(task_ids))
        for r in responses:
            if r.arm != arm:
                continue
            value = r.score
            if math.isnan(value):
                if missing == "drop":
                    continue
                value = SCORE_RANGE[0]
            total[index[r.id]] += value
            count[index[r.id]] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[arm] = total / count
    return out
