"""Query rows: which positions of a trace ask the question you are studying.

R2A averages attention over *every* answer row. Most answer rows write fixed text
(``The answer is``, ``\\boxed{``) and need nothing from the reasoning; the one row that
*emits* the answer's value is diluted among them. On the shipped tiny reasoner the heads that
rank top by the whole-answer mean cost nothing when ablated, while the head found at the
emitting row takes the value's accuracy from 0.980 [0.954, 0.991] to 0.120 [0.085, 0.166]
(drop +0.860 [+0.807, +0.896], Newcombe paired interval, exact McNemar p = 4e-65; its model
card, 250 problems). So profiles and rankings accept chosen query rows, beside the segments:

>>> profiles = rc.AttentionProfile.compute(model, traces, queries={"emit": rc.rows.predicting()})
>>> rc.rank_heads(profiles, query="emit", key="reasoning")

A *row selector* maps a :class:`~reasoning_circuits.trace.Trace` to token positions (ints).
Row r "predicts" token r + 1: the rows that predict a span ``[a, b)`` are ``a - 1 .. b - 2``.

* :func:`predicting` — the rows that predict the answer's value: the content of the last
  ``\\boxed{...}`` in the answer (any depth of braces), else its last number, or a literal
  text you give;
* :func:`tokens_where` — rows whose token text satisfies a predicate, inside a segment;
* :func:`positions` — fixed positions (negative ones count from the end of the trace).

A trace in which a selector finds no row contributes NaN for that query (and the ranking's
NaN rule leaves it out, with a warning that counts it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal

from reasoning_circuits._options import check_option
from reasoning_circuits.trace import Trace

__all__ = [
    "RowSelector",
    "Target",
    "boxed_span",
    "positions",
    "predicting",
    "select_rows",
    "tokens_where",
]

RowSelector = Callable[[Trace], Sequence[int]]
"""``selector(trace)`` → the token positions used as query rows."""

Target = Literal["final_answer", "boxed", "last_number"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed_span(text: str) -> tuple[int, int] | None:
    """Character span of the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in
    ``text``, with braces nested to any depth; ``None`` if there is none or it never closes."""
    found = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                found = (start, pos)
                break
    return found


def _target_span(trace: Trace, target: str) -> tuple[int, int] | None:
    """Character span (in ``trace.text``) of the target inside the answer segment."""
    answer = trace["answer"]
    text = trace.text[answer.char_slice]
    span: tuple[int, int] | None = None
    if target in ("final_answer", "boxed"):
        span = boxed_span(text)
    if span is None and target in ("final_answer", "last_number"):
        numbers = list(_NUMBER.finditer(text))
        span = (numbers[-1].start(), numbers[-1].end()) if numbers else None
    if target not in ("final_answer", "boxed", "last_number"):
        at = text.rfind(target)
        span = (at, at + len(target)) if at >= 0 and target else None
    if span is None or span[0] == span[1]:
        return None
    return answer.char_start + span[0], answer.char_start + span[1]


def predicting(target: Target | str = "final_answer") -> RowSelector:
    """Rows that predict the target tokens of the answer segment.

    ``target``: ``"final_answer"`` (the last ``\\boxed{}`` content, else the last number),
    ``"boxed"``, ``"last_number"``, or any other string: its last occurrence in the answer.
    The target's tokens are those whose characters overlap it; the rows are the positions
    just before each of them.
    """
    if not isinstance(target, str) or not target:
        raise ValueError(
            f"target must be 'final_answer', 'boxed', 'last_number' or a non-empty text, got "
            f"{target!r}"
        )

    def select(trace: Trace) -> list[int]:
        span = _target_span(trace, target)
        if span is None:
            return []
        tokens = [i for i in trace["answer"].positions if _overlaps(trace.offsets[i], span)]
        return [i - 1 for i in tokens if i >= 1]

    select.__name__ = f"predicting({target!r})"
    return select


def _overlaps(chars: tuple[int, int], span: tuple[int, int]) -> bool:
    return chars[0] < span[1] and chars[1] > span[0]


def tokens_where(predicate: Callable[[str], bool], *, segment: str = "answer") -> RowSelector:
    """Rows of ``segment`` whose token text (as decoded into the trace) satisfies ``predicate``,
    e.g. ``tokens_where(str.isdigit)``."""

    def select(trace: Trace) -> list[int]:
        return [
            i
            for i in trace[segment].positions
            if predicate(trace.text[trace.offsets[i][0] : trace.offsets[i][1]])
        ]

    select.__name__ = f"tokens_where({getattr(predicate, '__name__', 'predicate')}, {segment})"
    return select


def positions(*chosen: int) -> RowSelector:
    """Fixed positions; negative ones count from the end of each trace (``-1`` = last)."""
    if not chosen:
        raise ValueError("positions() needs at least one position")

    def select(trace: Trace) -> list[int]:
        out = []
        for p in chosen:
            q = p + len(trace) if p < 0 else p
            if not 0 <= q < len(trace):
                raise IndexError(f"position {p} is outside a trace of {len(trace)} tokens")
            out.append(q)
        return sorted(set(out))

    select.__name__ = f"positions{chosen}"
    return select


def select_rows(trace: Trace, selector: RowSelector | Sequence[int] | str) -> list[int]:
    """The rows a selector picks in ``trace`` (a selector, a list of positions, or a target
    name of :func:`predicting`), sorted and checked to lie in the trace."""
    if isinstance(selector, str):
        check_option(selector, Target, "query rows")
        selector = predicting(selector)
    chosen = positions(*selector)(trace) if not callable(selector) else selector(trace)
    rows = sorted({int(r) for r in chosen})
    if rows and (rows[0] < 0 or rows[-1] >= len(trace)):
        raise IndexError(f"query rows {rows[:5]} fall outside a trace of {len(trace)} tokens")
    return rows
