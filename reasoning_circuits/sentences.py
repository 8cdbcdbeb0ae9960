"""Split reasoning text into sentences with exact character spans.

A reasoning trace is mostly prose with arithmetic, LaTeX and numbered steps. Naive splitting
on every ``.`` cuts ``12.50`` in two, splits after ``e.g.`` and inside ``$x = 2.5$``, and
loses the separators it splits on. This splitter only returns *spans* into the original
text, so the pieces concatenate back to the input character for character.

Rules (applied outside math only):

* A sentence ends after ``.``, ``!`` or ``?`` (plus closing quotes or brackets) when
  whitespace follows. A decimal point is never followed by whitespace, so ``12.50`` stays
  whole. A period after a known abbreviation (``e.g.``, ``Dr.``, ``approx.``), after a
  single letter (``J. Smith``), or after a bare step number at the start of a line (``1.``)
  does not end a sentence.
* A line break ends a sentence (blank lines therefore do too), except where an unfinished
  line runs into a display equation (``We have\n\\[ x = 2 \\]``).
* Math is atomic: ``$...$``, ``$$...$$``, ``\\(...\\)`` and ``\\[...\\]`` are never split inside,
  so a display equation over several lines is kept in one sentence.

Whitespace between two sentences belongs to the end of the first one; whitespace before the
first sentence belongs to it. Whitespace-only input gives no sentences.
"""

from __future__ import annotations

import bisect
import itertools
import re

__all__ = ["split_sentences"]

_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al approx resp fig figs eq eqs no nos dr mr mrs ms prof st jr sr "  # noqa: SIM905
    "vol pp ch sec def thm lem prop cor ex min max inc ltd co".split()
)
_MATH = re.compile(
    r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|(?<!\\)\$(?:\\.|[^$\\])+?\$",
    re.DOTALL,
)
_TERMINAL = re.compile(r"[.!?]+[\"')\]}]*(?=\s)")
_NEXT_LINE = re.compile(r"\n\s*")  # a line break and the whitespace after it


def _math_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _MATH.finditer(text)]


def _inside(pos: int, spans: list[tuple[int, int]], starts: list[int]) -> bool:
    """Whether ``pos`` lies in one of the sorted, disjoint ``spans`` (``starts`` = their starts)."""
    k = bisect.bisect_right(starts, pos) - 1
    return k >= 0 and pos < spans[k][1]


def _last_nonspace(text: str, stop: int) -> str:
    """The last non-whitespace character before ``stop`` ("" if there is none)."""
    pos = stop - 1
    while pos >= 0 and text[pos].isspace():
        pos -= 1
    return text[pos] if pos >= 0 else ""


def _is_false_stop(text: str, dot: int) -> bool:
    """True when the period at ``dot`` belongs to an abbreviation, an initial or a step number."""
    if text[dot] != ".":
        return False
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:dot].lstrip("([\"'")
    if word.lower() in _ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True
    if not word.isdigit():
        return False
    # A bare step number ("1." or "12.") that starts a line or follows a finished sentence
    # is a list marker, not the end of a sentence.
    last = start - 1
    while last >= 0 and text[last].isspace():
        last -= 1
    return last < 0 or "\n" in text[last + 1 : start] or text[last] in ".!?:"


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return half-open character spans ``[(start, stop), ...]`` of the sentences of ``text``.

    The spans are contiguous, start at 0 and end at ``len(text)`` (empty text or
    whitespace-only text gives ``[]``). See the module docstring for the rules.
    """
    if not text.strip():
        return []
    math = _math_spans(text)
    cuts: set[int] = set()
    starts = [a for a, _ in math]
    for m in _TERMINAL.finditer(text):
        if not _inside(m.start(), math, starts) and not _is_false_stop(text, m.start()):
            cuts.add(m.end())
    display_starts = {a for a in starts if text.startswith(("$$", "\\["), a)}
    for m in _NEXT_LINE.finditer(text):
        i, nxt = m.start(), m.end()
        if _inside(i, math, starts):
            continue
        # "We have\n\\[ x = 2 \\]": an unfinished line continues into its display equation.
        before = _last_nonspace(text, i)
        if nxt in display_starts and before and before not in ".!?":
            continue
        cuts.add(i)
    # Each cut moves forward over whitespace so the separator stays with the earlier sentence.
    boundaries: set[int] = set()
    for cut in cuts:
        pos = cut
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if 0 < pos < len(text):
            boundaries.add(pos)
    edges = [0, *sorted(boundaries), len(text)]
    spans = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    # Leading whitespace-only piece (e.g. the newline after <think>) joins the first sentence.
    if len(spans) > 1 and not text[spans[0][0] : spans[0][1]].strip():
        spans = [(0, spans[1][1]), *spans[2:]]
    return spans
