"""Grade final answers of reasoning models against gold answers (MATH-style and GSM8K-style).

A reasoning model writes ``prompt <think> reasoning </think> answer``. Only the **answer**
(the text after the reasoning) is graded: a number or ``\\boxed{}`` inside the reasoning, in
the prompt or in a few-shot example never decides correctness.

>>> from reasoning_circuits import grading
>>> grading.grade("<think>2+2 is 4</think> So $\\boxed{4}$.", "4", kind="gsm8k").correct
True

Answer segment
--------------
The closing delimiter is the first ``</think>`` after the first ``<think>`` (the convention
of :class:`~reasoning_circuits.trace.Trace`); a response without ``<think>`` (a completion
whose prompt ended with ``<think>``) uses its first ``</think>``. Everything after it is the
answer. Without such a ``</think>``:

* ``think="required"`` (default, for responses generated with reasoning): the reasoning
  never ended (e.g. the token limit was hit), reason ``"unfinished"``;
* ``think="optional"`` (for responses generated without the think prompt, or by a
  non-reasoning model): if the response opened ``<think>`` it is still ``"unfinished"``,
  otherwise the whole response is the answer.

An answer segment that contains another ``<think>`` or ``</think>`` is ``"malformed"``: the
model reopened or re-closed its reasoning, so which part is "the answer" is ambiguous (R2A
keeps only responses with exactly one ``</think>``).

Extraction (:func:`extract_answer`)
-----------------------------------
In the answer segment, in this order:

1. the content of the **last** non-empty ``\\boxed{...}`` or ``\\fbox{...}`` (any depth of
   nested braces; escaped braces ``\\{ \\}`` do not count), or ``\\boxed 5`` (one
   space-delimited token). Empty boxes (``\\boxed{}``, often an echo of the instruction) are
   skipped. If the last box is never closed (``\\boxed{\\frac{1}{2`` at the end of a cut-off
   answer) the response is ``"malformed"``.
2. the text after the last GSM8K marker ``#### `` (to the end of its line);
3. with ``fallback=True`` (default) the last number (``-3``, ``1,000``, ``2.5``, ``3/4``).

:attr:`Grade.source` says which rule fired, so an analysis can exclude fallbacks. Nothing
extracted: ``"no_answer"``.

Equivalence
-----------
``kind="gsm8k"``: the gold is a number (or a GSM8K solution ending in ``#### 72``). A
prediction that reads as a number (``$1,000``, ``18.00``, ``\\frac{7}{2}``, ``50\\%``,
``18 dollars``) is compared exactly as a fraction; anything else goes to math-verify.

``kind="math"``: both sides are normalised (spaces, ``$``, ``\\left``/``\\right``, ``\\dfrac``,
``\\text{}`` wrappers, ``^\\circ``, thousands separators); equal strings are correct without
further work. Otherwise `math-verify <https://github.com/huggingface/Math-Verify>`_
decides: ``verify(parse(gold), parse(prediction))`` on ``$...$``-wrapped strings, which
handles equivalent forms (``0.5`` vs ``\\frac{1}{2}``), intervals, sets, tuples, matrices,
units and percentages, and rejects close-but-wrong values (``\\frac{11}{3}`` vs
``\\frac{14}{3}``; floats must agree to 6 decimals).

Timeouts and the fallback
-------------------------
math-verify's own timeout uses ``signal.alarm``: it works only in the main thread, and no
signal interrupts a long computation inside C (a huge integer power). Here math-verify never
runs in the calling process: items go to worker subprocesses (started on first use, reused,
stopped at exit or by :func:`shutdown`). Each item gets ``timeout`` seconds from when a
worker receives it: at 80% of it an alarm inside the worker stops math-verify, and at 100%
the parent kills the worker and starts a new one. Either way the item's verdict falls back to
the normalised string comparison, which has already failed (equal strings never reach
math-verify), so it gets ``correct=False, reason="timeout"``. A worker that dies on an item
gives ``reason="wrong"`` with the cause in :attr:`Grade.detail`. Nothing can block a batch
for longer than ``timeout`` per item, and no thread or signal of the caller is used, so
grading works from threads, notebooks and scripts without a ``__main__`` guard.

Reasons
-------
``"correct"``, ``"wrong"``, ``"no_answer"`` (nothing extracted), ``"unfinished"`` (reasoning
never closed), ``"malformed"`` (see above), ``"timeout"`` (math-verify did not finish; the
item is counted as not correct, and a caller may prefer to drop it). ``correct`` is True
only for ``"correct"``.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from tqdm.auto import tqdm

from reasoning_circuits._options import check_option

__all__ = [
    "Grade",
    "Kind",
    "Reason",
    "Source",
    "Think",
    "answer_segment",
    "extract_answer",
    "gold_answer",
    "grade",
    "grade_frame",
    "grade_many",
    "grades_to_frame",
    "shutdown",
]

Kind = Literal["math", "gsm8k"]
"""How to compare: ``"math"`` (normalised strings, then math-verify), ``"gsm8k"`` (numbers)."""
Think = Literal["required", "optional"]
"""Whether a response must close its reasoning with ``</think>`` (see the module docstring)."""
Reason = Literal["correct", "wrong", "no_answer", "unfinished", "malformed", "timeout"]
"""Why a :class:`Grade` is what it is (see the module docstring)."""
Source = Literal["boxed", "hashes", "last_number"]
"""Which extraction rule produced :attr:`Grade.extracted`."""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Grade:
    """The verdict on one response.

    Attributes:
        correct: True only when ``reason == "correct"``.
        extracted: the answer read from the response (box content, text after ``####``, or
            the last number), or None when nothing was read.
        reason: one of :data:`Reason`.
        gold: the gold answer as compared (box content of a solution, the number after
            ``####``).
        source: which extraction rule gave ``extracted`` (None when nothing was read).
        detail: how the verdict was reached, for a human reader.
        seconds: wall time spent in math-verify for this item (0 when not needed); not part
            of equality.
    """

    correct: bool
    extracted: str | None
    reason: Reason
    gold: str
    source: Source | None = None
    detail: str = ""
    seconds: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        check_option(self.reason, Reason, "reason")
        if self.source is not None:
            check_option(self.source, Source, "source")
        if self.correct != (self.reason == "correct"):
            raise ValueError(
                f"correct={self.correct} contradicts reason={self.reason!r}; correct is True "
                "exactly when reason is 'correct'"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Answer segment and extraction
# --------------------------------------------------------------------------------------------


def _split_answer(response: str, think: Think) -> tuple[str | None, str]:
    """``(answer segment or None when unfinished, note)``."""
    open_at = response.find(THINK_OPEN)
    start = 0 if open_at < 0 else open_at + len(THINK_OPEN)
    close_at = response.find(THINK_CLOSE, start)
    if close_at >= 0:
        return response[close_at + len(THINK_CLOSE) :], ""
    if open_at >= 0:
        return None, f"{THINK_OPEN!r} at char {open_at} is never closed by {THINK_CLOSE!r}"
    if think == "required":
        return None, (
            f"no {THINK_CLOSE!r} in the response: the reasoning never ended. For responses "
            "generated without reasoning pass think='optional'"
        )
    return response, ""


def answer_segment(response: str, *, think: Think = "required") -> str | None:
    """The text after the reasoning, or None when the reasoning never ended.

    See the module docstring for the rule (first ``</think>`` after the first ``<think>``).
    """
    _check_text(response, "response")
    check_option(think, Think, "think")
    return _split_answer(response, think)[0]


def _match_brace(text: str, open_at: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_at``, or -1. Backslash escapes skip the
    next character, so ``\\{`` and ``\\}`` do not count."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_TOKEN = re.compile(r"[ \t]*([^\s${}]+)")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_NUMBER = re.compile(
    r"(?<![\w.)}])(?:-|−)?"  # a sign only where it cannot be a binary minus
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?(?![\w.]*\d)"
    r"|(?<![\w.])(?:-|−)?\.\d+"
)


def _last_box(segment: str) -> tuple[str | None, bool]:
    """``(content of the last non-empty box, malformed)``; malformed = the last box never
    closes."""
    starts = [m.end() for m in _BOX.finditer(segment)]
    # the last 64 boxes at most: a degenerate answer with thousands of unclosed boxes must
    # not cost quadratic time
    for rank, after in enumerate(reversed(starts[-64:])):
        j = after
        while j < len(segment) and segment[j] in " \t\n":
            j += 1
        if j < len(segment) and segment[j] == "{":
            close = _match_brace(segment, j)
            if close < 0:
                if rank == 0:
                    return None, True
                continue
            content = segment[j + 1 : close].strip()
        else:
            token = _BOX_TOKEN.match(segment, after)
            content = token.group(1).rstrip(".,;:") if token else ""
        if content:
            return content, False
    return None, False


def _last_number(segment: str) -> str | None:
    found = _NUMBER.findall(segment)
    return found[-1].replace("−", "-") if found else None


def _extract(segment: str, fallback: bool) -> tuple[str | None, Source | None, bool]:
    """``(extracted, source, malformed)`` for an answer segment."""
    boxed, malformed = _last_box(segment)
    if malformed:
        return None, None, True
    if boxed is not None:
        return boxed, "boxed", False
    hashes = [m.group(1).strip() for m in _HASHES.finditer(segment)]
    hashes = [h for h in hashes if h]
    if hashes:
        return hashes[-1], "hashes", False
    if fallback:
        number = _last_number(segment)
        if number is not None:
            return number, "last_number", False
    return None, None, False


def extract_answer(
    response: str,
    kind: Kind = "math",
    *,
    think: Think = "required",
    fallback: bool = True,
) -> str | None:
    """The final answer written in ``response``, or None (unfinished, malformed, no answer).

    ``response`` is a whole completion, with or without the prompt and the reasoning; only
    the answer segment (after ``</think>``) is read. The rules (last ``\\boxed{}``, then
    ``####``, then the last number when ``fallback``) are in the module docstring. With
    ``kind="gsm8k"`` an answer that reads as a number is returned canonically (``$1,000`` →
    ``"1000"``, ``\\frac{7}{2}`` → ``"3.5"``, ``\\frac{7}{3}`` → ``"7/3"``).

    >>> extract_answer("<think>...</think> $\\boxed{\\frac{1}{\\sqrt{2}}}$")
    '\\\\frac{1}{\\\\sqrt{2}}'
    """
    _check_text(response, "response")
    check_option(kind, Kind, "kind")
    check_option(think, Think, "think")
    segment, _ = _split_answer(response, think)
    if segment is None or _has_think_tag(segment):
        return None
    text, _, _ = _extract(segment, fallback)
    if text is not None and kind == "gsm8k":
        value = _as_number(text)
        if value is not None:
            return _format_number(value)
    return text


def _has_think_tag(segment: str) -> bool:
    return THINK_OPEN in segment or THINK_CLOSE in segment


# --------------------------------------------------------------------------------------------
# Normalisation and numbers
# --------------------------------------------------------------------------------------------

_TEXT_MACRO = re.compile(
    r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}"
)
_SPACING = re.compile(r"\\[!,;: ]|\\(?:left|right)(?![A-Za-z])|\\quad|\\qquad|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,)(?=\d{3}(?!\d))")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRACTION = re.compile(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}|(-?)\\[dt]?frac(\d)(\d)")
_SLASH = re.compile(r"(-?\d+)/(\d+)")
_UNIT_TAIL = re.compile(r"\s+[A-Za-z][A-Za-z .]*$")


def _unwrap_text(s: str) -> str:
    previous = None
    while previous != s:
        previous = s
        s = _TEXT_MACRO.sub(r"\1", s)
    return s


def _normalise_math(s: str) -> str:
    """Formatting-only normalisation: equal results mean equal answers."""
    s = _unwrap_text(s)
    s = _strip_dollars(s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("−", "-").replace("\\varnothing", "\\emptyset")
    s = _SPACING.sub("", s)
    s = _DEGREES.sub("", s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    if _THOUSANDS.search(s) and re.fullmatch(r"-?[\d,{}]+(?:\.\d+)?", s):
        s = _THOUSANDS.sub("", s)
    return s


def _strip_dollars(s: str) -> str:
    """Drop currency signs ``\\$`` and math delimiters ``$``."""
    return s.replace("\\$", "").replace("$", "")


def _as_number(text: str) -> Fraction | None:
    """The exact value of an answer that is just a number (with currency, %, units,
    thousands separators), else None."""
    s = _unwrap_text(text).strip()
    s = _strip_dollars(s).replace("−", "-")
    s = s.replace("\\%", "").replace("%", "")
    s = _SPACING.sub("", s).strip().rstrip(".").strip()
    s = _UNIT_TAIL.sub("", s) if re.match(r"-?[\d.,]", s) else s
    s = re.sub(r"\s+", "", s)
    if _GROUPED_NUMBER.fullmatch(s):
        s = s.replace(",", "")
    s = s.replace("{,}", "")
    if _PLAIN_NUMBER.fullmatch(s):
        return Fraction(s)
    frac = _FRACTION.fullmatch(s)
    if frac:
        sign, num, den = (frac.group(1), frac.group(2), frac.group(3))
        if num is None:
            sign, num, den = frac.group(4), frac.group(5), frac.group(6)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign else value
    slash = _SLASH.fullmatch(s)
    if slash and int(slash.group(2)) != 0:
        return Fraction(int(slash.group(1)), int(slash.group(2)))
    return None


def _format_number(value: Fraction) -> str:
    """``18``, ``-3.5`` (terminating decimals, exactly), else ``7/3``."""
    if value.denominator == 1:
        return str(value.numerator)
    rest, places = value.denominator, 0
    for p in (2, 5):
        count = 0
        while rest % p == 0:
            rest //= p
            count += 1
        places = max(places, count)
    if rest != 1:
        return f"{value.numerator}/{value.denominator}"
    scaled = abs(value) * 10**places
    digits = str(scaled.numerator).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return "-" + text if value < 0 else text


def gold_answer(gold: str | int, kind: Kind = "math") -> str:
    """The gold answer as it is compared.

    ``kind="math"``: the content of the last ``\\boxed{}`` if ``gold`` has one (a whole
    solution), else ``gold`` stripped. ``kind="gsm8k"``: the number after the last ``####``
    (or ``gold`` itself when it is a number), thousands separators removed. Raises
    ``ValueError`` for an empty gold or a GSM8K gold that is not a number.
    """
    check_option(kind, Kind, "kind")
    if isinstance(gold, bool) or not isinstance(gold, (str, int)):
        raise TypeError(f"gold must be a str (or an int for GSM8K), got {type(gold).__name__}")
    text = str(gold).strip()
    if kind == "gsm8k":
        marked = text.rsplit("####", 1)[-1].strip() if "####" in text else text
        value = _as_number(marked)
        if value is None:
            raise ValueError(
                f"GSM8K gold {_short(text)!r} is not a number (expected e.g. '72', '1,000' or a "
                "solution ending in '#### 72'); pass kind='math' for non-numeric answers"
            )
        return _format_number(value)
    if _BOX.search(text):
        boxed, malformed = _last_box(text)
        if malformed or boxed is None:
            raise ValueError(f"gold {_short(text)!r} has a \\boxed{{}} that is empty or unclosed")
        text = boxed
    if not _normalise_math(text):
        raise ValueError(f"gold answer {gold!r} is empty; pass the reference answer string")
    return text


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Grading without math-verify (everything the caller's process decides)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    """An item whose verdict needs math-verify."""

    extracted: str
    source: Source
    gold: str


def _prejudge(
    response: str, gold: str, kind: Kind, think: Think, fallback: bool, shortcut: bool
) -> Grade | _Pending:
    _check_text(response, "response")
    segment, note = _split_answer(response, think)
    if segment is None:
        return Grade(False, None, "unfinished", gold, detail=note)
    extracted, source, malformed = _extract(segment, fallback)
    if _has_think_tag(segment):
        return Grade(
            False,
            extracted,
            "malformed",
            gold,
            source,
            f"the answer segment contains another {THINK_OPEN!r} or {THINK_CLOSE!r}",
        )
    if malformed:
        return Grade(False, None, "malformed", gold, detail="the last \\boxed{ is never closed")
    if extracted is None or source is None:
        return Grade(False, None, "no_answer", gold, detail="no box, '####' or number found")
    if kind == "gsm8k":
        value = _as_number(extracted)
        if value is not None:
            shown = _format_number(value)
            ok = value == Fraction(gold)
            return Grade(
                ok,
                shown,
                "correct" if ok else "wrong",
                gold,
                source,
                f"numbers: {shown} {'==' if ok else '!='} {gold}",
            )
        return _Pending(extracted, source, gold)
    if shortcut and _normalise_math(extracted) == _normalise_math(gold):
        return Grade(True, extracted, "correct", gold, source, "equal after normalisation")
    return _Pending(extracted, source, gold)


def _verdict(pending: _Pending, result: Mapping[str, Any]) -> Grade:
    seconds = float(result.get("seconds", 0.0))
    if result.get("timeout"):
        how = "killed" if result.get("hard") else "stopped"
        return Grade(
            False,
            pending.extracted,
            "timeout",
            pending.gold,
            pending.source,
            f"math-verify {how} after {seconds:.2f} s; normalised strings differ",
            seconds,
        )
    if "error" in result:
        return Grade(
            False,
            pending.extracted,
            "wrong",
            pending.gold,
            pending.source,
            f"math-verify failed ({result['error']}); normalised strings differ",
            seconds,
        )
    ok = bool(result.get("ok"))
    return Grade(
        ok,
        pending.extracted,
        "correct" if ok else "wrong",
        pending.gold,
        pending.source,
        "math-verify: equivalent" if ok else "math-verify: not equivalent",
        seconds,
    )


# --------------------------------------------------------------------------------------------
# math-verify in worker subprocesses
# --------------------------------------------------------------------------------------------

# Runs as ``python -c <source> <json sys.path>``. Protocol: JSON lines; the worker answers
# {"ready": version} or {"fatal": message} once, then one line per job.
_WORKER_SOURCE = r"""
import json, os, signal, sys
sys.path[:] = json.loads(sys.argv[1])
channel = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # stray prints must not corrupt the protocol
def send(message):
    channel.write(json.dumps(message) + "\n")
try:
    import logging, re
    from importlib.metadata import version
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify
    installed = version("math-verify")
    found = re.match(r"(\d+)\.(\d+)", installed)
    if found is None or (int(found.group(1)), int(found.group(2))) < (0, 8):
        raise ImportError(f"math-verify {installed} is too old (timeouts cannot be disabled)")
    # a broken install (e.g. a mismatched antlr4 runtime) parses nothing and grades all wrong
    if not verify(parse("$\\frac{1}{2}$", parsing_timeout=None),
                  parse("$0.5$", parsing_timeout=None), timeout_seconds=None):
        raise ImportError("math-verify failed its self-check (1/2 == 0.5); check antlr4")
except BaseException as error:
    send({"fatal": type(error).__name__ + ": " + str(error)})
    sys.exit(1)
class SoftTimeout(BaseException):
    pass
def on_alarm(signum, frame):
    raise SoftTimeout()
alarm = hasattr(signal, "setitimer")
if alarm:
    signal.signal(signal.SIGALRM, on_alarm)
parsed_golds = {}
def wrap(text):
    return "$" + text + "$"
send({"ready": installed})
for line in sys.stdin:
    job = json.loads(line)
    try:
        try:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, job["soft"])
            gold = parsed_golds.get(job["gold"])
            if gold is None:
                gold = parse(wrap(job["gold"]), parsing_timeout=None)
                if len(parsed_golds) > 4096:
                    parsed_golds.clear()
                parsed_golds[job["gold"]] = gold
            pred = parse(wrap(job["pred"]), parsing_timeout=None)
            result = {"ok": bool(verify(gold, pred, timeout_seconds=None))}
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except SoftTimeout:
        result = {"timeout": True}
    except Exception as error:
        result = {"error": type(error).__name__}
    send(result)
"""

_START_TIMEOUT = 120.0
_SOFT_FRACTION = 0.8


class _Worker:
    def __init__(self, source: str, events: queue.Queue[tuple[_Worker, bytes | None]]):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source, json.dumps([p for p in sys.path if p is not None])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        self.ready = False
        self.job: int | None = None
        self.sent_at = 0.0
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self._reader.start()

    def _read(self, events: queue.Queue[tuple[_Worker, bytes | None]]) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for line in stdout:
                events.put((self, line))
        except (OSError, ValueError):
            pass
        events.put((self, None))

    def send(self, message: Mapping[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message).encode() + b"\n")
        stdin.flush()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _Pool:
    """Worker subprocesses running math-verify, each job under a hard deadline."""

    def __init__(self, source: str = _WORKER_SOURCE):
        self.source = source
        self.workers: list[_Worker] = []
        self.events: queue.Queue[tuple[_Worker, bytes | None]] = queue.Queue()
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.source, self.events)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        worker.kill()

    def run(
        self,
        jobs: Sequence[Mapping[str, Any]],
        *,
        timeout: float,
        workers: int,
        on_result: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """One result dict per job: ``{"ok": bool}``, ``{"timeout": True}`` or
        ``{"error": str}``, each with ``"seconds"``."""
        with self.lock:
            return self._run(jobs, timeout, workers, on_result)

    def _run(
        self,
        jobs: Sequence[Mapping[str, Any]],
        timeout: float,
        workers: int,
        on_result: Callable[[int], None] | None,
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        todo = collections.deque(range(len(jobs)))
        soft = max(0.01, _SOFT_FRACTION * timeout)
        while len(self.workers) < min(workers, len(jobs)):
            self._spawn()

        def finish(worker: _Worker, result: dict[str, Any]) -> None:
            assert worker.job is not None
            result["seconds"] = time.monotonic() - worker.sent_at
            results[worker.job] = result
            if on_result is not None:
                on_result(worker.job)
            worker.job = None

        try:
            while todo or any(w.job is not None for w in self.workers):
                for worker in list(self.workers):
                    busy = sum(w.job is not None for w in self.workers)
                    if worker.ready and worker.job is None and todo and busy < workers:
                        index = todo.popleft()
                        worker.job, worker.sent_at = index, time.monotonic()
                        try:
                            worker.send({**jobs[index], "soft": soft})
                        except OSError:
                            finish(worker, {"error": "math-verify worker exited"})
                            self._retire(worker)
                            self._spawn()
                deadlines = [w.sent_at + timeout for w in self.workers if w.job is not None]
                deadlines += [w.started_at + _START_TIMEOUT for w in self.workers if not w.ready]
                wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.1
                try:
                    worker, line = self.events.get(timeout=wait)
                except queue.Empty:
                    pass
                else:
                    if worker in self.workers:
                        self._handle(worker, line, finish)
                now = time.monotonic()
                for worker in list(self.workers):
                    if worker.job is not None and now - worker.sent_at >= timeout:
                        finish(worker, {"timeout": True, "hard": True})
                        self._retire(worker)
                        self._spawn()
                    elif not worker.ready and now - worker.started_at > _START_TIMEOUT:
                        self._retire(worker)
                        raise RuntimeError(
                            f"a math-verify worker did not start within {_START_TIMEOUT:.0f} s "
                            f"({sys.executable}); check that `python -c 'import math_verify'` "
                            "works"
                        )
        except BaseException:
            for worker in list(self.workers):
                if worker.job is not None or not worker.ready:
                    self._retire(worker)
            raise
        return [r if r is not None else {"error": "no result"} for r in results]

    def _handle(
        self,
        worker: _Worker,
        line: bytes | None,
        finish: Callable[[_Worker, dict[str, Any]], None],
    ) -> None:
        if line is None:  # the worker exited
            if worker.job is not None:
                finish(worker, {"error": "math-verify worker exited"})
            elif not worker.ready:
                self._retire(worker)
                raise RuntimeError(
                    f"a math-verify worker exited during start-up ({sys.executable}); check "
                    "that `python -c 'import math_verify'` works"
                )
            self._retire(worker)
            self._spawn()
            return
        try:
            message = json.loads(line)
        except ValueError:
            return
        if "fatal" in message:
            self._retire(worker)
            raise ImportError(
                f"math-verify is not usable in a grading worker ({message['fatal']}); install "
                "it with `pip install -U 'math-verify>=0.8'`"
            )
        if "ready" in message:
            worker.ready = True
        elif worker.job is not None:
            finish(worker, dict(message))

    def close(self) -> None:
        for worker in list(self.workers):
            worker.close()
        self.workers.clear()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
        return _POOL


def shutdown() -> None:
    """Stop the math-verify worker processes (they are restarted when needed)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()
        _POOL = None


atexit.register(shutdown)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _check_math_verify() -> None:
    if importlib.util.find_spec("math_verify") is None:
        raise ImportError(
            "grading needs math-verify for answers that are not plain numbers or equal "
            "strings; install it with `pip install 'math-verify>=0.8'`"
        )


# --------------------------------------------------------------------------------------------
# Public grading functions
# --------------------------------------------------------------------------------------------


def grade(
    response: str,
    gold: str | int,
    *,
    kind: Kind = "math",
    think: Think = "required",
    fallback: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    shortcut: bool = True,
) -> Grade:
    """Grade one response against its gold answer.

    Args:
        response: the whole completion (prompt and reasoning may be included; only the text
            after the reasoning is read, see the module docstring).
        gold: the reference answer: a MATH answer string or a solution with ``\\boxed{}``
            (``kind="math"``), a number or a GSM8K solution ending in ``#### n``
            (``kind="gsm8k"``).
        kind: ``"math"`` or ``"gsm8k"``.
        think: ``"required"`` (a response without ``</think>`` is unfinished) or
            ``"optional"`` (for responses generated without reasoning).
        fallback: read the last number when there is no box and no ``####``.
        timeout: seconds math-verify may spend on this item (> 0).
        shortcut: accept equal normalised strings without math-verify (set False to check
            math-verify itself).

    >>> grade("</think> $\\boxed{\\frac{11}{3}}$", "\\frac{14}{3}").reason
    'wrong'
    """
    return grade_many(
        [response],
        [gold],
        kind=kind,
        think=think,
        fallback=fallback,
        timeout=timeout,
        shortcut=shortcut,
        progress=False,
    )[0]


def grade_many(
    responses: Sequence[str],
    golds: Sequence[str | int],
    *,
    kind: Kind = "math",
    think: Think = "required",
    fallback: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
    shortcut: bool = True,
    progress: bool | None = None,
) -> list[Grade]:
    """Grade responses against golds (paired by position); one :class:`Grade` each.

    Everything decidable without math-verify (unfinished, no answer, numbers, equal
    normalised strings) is decided here; the remaining distinct (gold, answer) pairs go to
    ``workers`` math-verify subprocesses (default ``min(4, cpu count)``), each under
    ``timeout`` seconds (see the module docstring). The total time is therefore bounded by
    about ``distinct pairs × timeout / workers``. ``progress``: a bar over the math-verify
    items (default: when there are more than 200).
    """
    check_option(kind, Kind, "kind")
    check_option(think, Think, "think")
    if isinstance(responses, str) or isinstance(golds, str):
        raise TypeError("responses and golds must be sequences of strings, not one string")
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds; pair them 1:1")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    gold_texts = [gold_answer(g, kind) for g in golds]
    first = [
        _prejudge(r, g, kind, think, fallback, shortcut) for r, g in zip(responses, gold_texts)
    ]
    pending = {p: None for p in first if isinstance(p, _Pending)}
    keys = list(pending)
    verdicts: dict[_Pending, Grade] = {}
    if keys:
        _check_math_verify()
        jobs = [{"gold": _strip_dollars(k.gold), "pred": _strip_dollars(k.extracted)} for k in keys]
        show = progress if progress is not None else len(jobs) > 200
        with tqdm(total=len(jobs), desc="math-verify", disable=not show) as bar:
            results = _pool().run(
                jobs,
                timeout=float(timeout),
                workers=workers or _default_workers(),
                on_result=lambda _: bar.update(1),
            )
        verdicts = {k: _verdict(k, r) for k, r in zip(keys, results)}
    return [verdicts[p] if isinstance(p, _Pending) else p for p in first]


def grades_to_frame(grades: Sequence[Grade], index: Sequence[Any] | None = None) -> Any:
    """A pandas DataFrame with one row per grade and the :class:`Grade` fields as columns."""
    import pandas as pd

    return pd.DataFrame([g.to_dict() for g in grades], index=index)


def grade_frame(
    frame: Any,
    *,
    response: str = "response",
    gold: str = "gold",
    kind: Kind = "math",
    prefix: str = "",
    **options: Any,
) -> Any:
    """A copy of ``frame`` with the grade of each row added as columns ``correct``,
    ``extracted``, ``reason``, ``source``, ``detail`` (each name prefixed by ``prefix``).

    ``response`` and ``gold`` name the columns to read; ``options`` go to :func:`grade_many`.
    """
    for name in (response, gold):
        if name not in frame.columns:
            raise KeyError(
                f"column {name!r} not in the frame (columns: {list(frame.columns)}); pass "
                "response=... and gold=... to name the columns"
            )
    grades = grade_many(list(frame[response]), list(frame[gold]), kind=kind, **options)
    out = frame.copy()
    for column in ("correct", "extracted", "reason", "source", "detail"):
        out[prefix + column] = [getattr(g, column) for g in grades]
    return out
