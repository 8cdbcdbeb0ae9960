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

import itertools
import re

__all__ = ["split_sentences"]

_ABBREVIATIONS = frozenset(
    [
        "e.g",
        "i.e",
        "etc",
        "vs",
        "cf",
        "al",
        "approx",
        "resp",
        "fig",
        "figs",
        "eq",
        "eqs",
        "no",
        "nos",
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "st",
        "jr",
        "sr",
        "vol",
        "pp",
        "ch",
        "sec",
        "def",
        "thm",
        "lem",
        "prop",
        "cor",
        "ex",
        "min",
        "max",
        "inc",
        "ltd",
        "co",
    ]
)
_MATH = re.compile(
    r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|(?<!\\)\$(?:\\.|[^$\\])+?\$",
    re.DOTALL,
)
_TERMINAL = re.compile(r"[.!?]+[\"')\]}]*(?=\s)")


def _math_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _MATH.finditer(text)]


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


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
    before = text[:start].rstrip()
    return before == "" or text[len(before) - 1 : start].startswith("\n") or before[-1] in ".!?:"


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return half-open character spans ``[(start, stop), ...]`` of the sentences of ``text``.

    The spans are contiguous, start at 0 and end at ``len(text)`` (empty text or
    whitespace-only text gives ``[]``). See the module docstring for the rules.
    """
    if not text.strip():
        return []
    math = _math_spans(text)
    cuts: set[int] = set()
    for m in _TERMINAL.finditer(text):
        if not _inside(m.start(), math) and not _is_false_stop(text, m.start()):
            cuts.add(m.end())
    display_starts = {a for a, _ in math if text.startswith(("$$", "\\["), a)}
    for i, ch in enumerate(text):
        if ch == "\n" and not _inside(i, math):
            nxt = len(text) - len(text[i:].lstrip())
            line = text[:i].rstrip()
            # "We have\n\\[ x = 2 \\]": an unfinished line continues into its display equation.
            if nxt in display_starts and line and line[-1] not in ".!?":
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
