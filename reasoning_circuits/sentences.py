"""Split reasoning text into sentences with exact character spans.

A reasoning trace is mostly prose with arithmetic, LaTeX, prices and numbered steps. Naive
splitting on every ``.`` cuts ``12.50`` in two, splits after ``e.g.`` and inside
``$x = 2.5$``, and loses the separators it splits on. This splitter only returns *spans*
into the original text, so the pieces concatenate back to the input character for
character, and it runs in linear time (up to a logarithmic factor) whatever the input.

Math first. These spans are atomic: nothing inside them ends a sentence.

* ``\\(...\\)``, ``$...$`` (inline) and ``\\[...\\]``, ``$$...$$``, ``\\begin{env}...\\end{env}``
  (display; any environment but prose ones such as ``itemize``). A backslash escapes the
  next character, so ``\\$5`` is a price and ``\\\\[2pt]`` is a line break, not a display.
* A math span never crosses a paragraph break (a blank line) and has a length cap
  (:data:`INLINE_MATH_CAP`, :data:`DISPLAY_MATH_CAP` characters). An opener without its
  closer inside those bounds is plain text, so an unclosed ``\\(`` or a stray ``$`` cannot
  swallow the rest of a trace. An opener ``\\(`` whose closer comes after another ``\\(``
  is treated as unclosed too.
* A single ``$`` pairs with the *next* ``$`` (as in TeX) and the pair is math only if it
  does not look like money: the closing ``$`` is not followed by a digit (``$5-$3``); the
  body does not start with an amount followed by a word (``$3 and $4``, ``$5 per item``);
  outside brace groups the body has no two lower-case words in a row (``$600. which totals
  $``) and no capitalized word after a sentence end or at a line start (``$3. Then $``);
  and a body with a space just inside a delimiter does not start with a digit
  (``$3.50 + $``). When a pair is refused, its second ``$`` becomes the next candidate
  opener.
* Brace groups that follow a command (``\\boxed{3.5}``, ``\\text{e.g. this}``, and the
  arguments after it) are atomic too, within the same bounds.

Sentence ends, outside those spans:

* ``.`` followed by whitespace, except after a title (``Dr.``), after an abbreviation that
  is not followed by a capital (``e.g. the``, ``no. 5``; but ``is no. Wait`` ends), after
  a single capital (``J. Doe``) unless a common sentence opener follows (``point A. Then``),
  or after a bare step number at the start of a line or after a finished sentence (``1.``).
  A decimal point is never followed by whitespace, so ``12.50`` stays whole.
* ``?`` followed by whitespace.
* ``!`` only when whitespace and a capital (or an opening quote and a capital, ``**``
  bold, a line break, the end) follow: ``That's it! Now`` splits; factorials ``So 5! = 120.``,
  ``7! / (4! * 3!)`` and ``n! ways`` do not. The cost: ``Wow! that`` stays one sentence.
* An ellipsis (``...``, ``…``) ends a sentence under the same condition as ``!``:
  ``1.333... is`` and ``so... then`` continue, ``Hmm... Let me`` splits.
* A math span whose body ends with a period (``$x = 3.$  Also``, ``\\[ ... = 5.\\]Then``)
  ends a sentence when whitespace or a capital follows it. A display equation also ends
  one when a capitalized word follows it on the same line (``\\[ ... \\]Because``,
  ``\\] Therefore``), whatever its last character.
* Closing quotes, brackets and ``*`` after the punctuation stay with the sentence.
* A line break ends a sentence, except where an unfinished line runs into a display
  equation (``We have\\n\\[ x = 2 \\]``, also across a blank line) and where a display
  equation not ending in a period continues on the next line in lower case
  (``\\]\\nwhere x is ...``).

Whitespace between two sentences belongs to the end of the first one; whitespace before the
first sentence belongs to it. Whitespace-only input gives no sentences.
"""

from __future__ import annotations

import bisect
import itertools
import re

__all__ = ["DISPLAY_MATH_CAP", "INLINE_MATH_CAP", "split_sentences"]

INLINE_MATH_CAP = 1_000
"""Longest inline math (``$...$``, ``\\(...\\)``) or brace group, in characters with delimiters."""
DISPLAY_MATH_CAP = 5_000
"""Longest display math (``$$...$$``, ``\\[...\\]``, environments), in characters."""

_TITLES = frozenset("dr mr mrs ms prof st jr sr".split())  # noqa: SIM905
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al approx resp fig figs eq eqs no nos vol pp ch sec def thm lem "  # noqa: SIM905
    "prop cor ex min max inc ltd co".split()
)
# Capitalized words that open a sentence far more often than they follow an initial.
_OPENERS = frozenset(
    "so then but now the this that these those we i it let wait hmm therefore thus hence "  # noqa: SIM905
    "since if in also and okay ok alternatively similarly note first second next finally "
    "yes no or because for to what how why when where an is are there here each every "
    "both all one maybe perhaps actually another given from after before using which oh "
    "right hold its our my".split()
)
_PROSE_ENVIRONMENTS = frozenset(
    "itemize enumerate description quote quotation verse center flushleft flushright "  # noqa: SIM905
    "minipage document proof abstract".split()
)

# Tokens of the math scan. A paragraph break is a blank line.
_TOKEN = re.compile(
    r"\\begin\{(?P<begin>[^{}\n]*)\}"
    r"|\\end\{(?P<end>[^{}\n]*)\}"
    r"|\\[A-Za-z]+"  # a command name
    r"|\\[^\n]"  # an escaped character: \( \) \[ \] \$ \\ \{ ...
    r"|\$\$|\$|\{|\}"
    r"|\n[^\S\n]*\n"
)
_CLOSER = {"\\(": "\\)", "\\[": "\\]", "$$": "$$", "$": "$"}
_CURRENCY = re.compile(r"\d[\d,]*(?:\.\d+)?\s+[A-Za-z]{2}")
_PROSE_WORDS = re.compile(r"(?<![\\A-Za-z])[a-z]{2,}\s+[a-z]{2,}(?![A-Za-z])")
_NEW_SENTENCE = re.compile(r"(?:[.!?]\s+|\n\s*)[A-Z][a-z]+(?![A-Za-z])")
_CAPITALIZED_WORD = re.compile(r"[^\S\n]*[A-Z][a-z]+(?![A-Za-z])")
_INNER_GROUP = re.compile(r"\{[^{}]*\}")
_TERMINAL = re.compile(r"(?<![.!?…])(?P<punct>[.!?…]+)[\"'”’)\]}*]*(?=\s)")
_NEXT_LINE = re.compile(r"\n\s*")  # a line break and the whitespace after it

# An atomic span: (start, stop, kind, body_stop) with kind "inline", "display" or "group"
# and body_stop the position where the closing delimiter starts.
_Span = tuple[int, int, str, int]


def _token_kind(m: re.Match[str]) -> str:
    if m.group("begin") is not None:
        return "begin:" + m.group("begin")
    if m.group("end") is not None:
        return "end:" + m.group("end")
    tok = m.group()
    if tok in ("\\(", "\\)", "\\[", "\\]", "$$", "$", "{", "}"):
        return tok
    if tok[0] == "\n":
        return "para"
    return "cmd" if tok[1:].isalpha() else "esc"


def _dollar_pair_is_math(text: str, open_: int, close: int) -> bool:
    """Whether ``$`` at ``open_`` and the next ``$`` at ``close`` delimit math, not money."""
    body = text[open_ + 1 : close]
    core = body.strip()
    if not core or text[close + 1 : close + 2].isdigit():
        return False
    if _CURRENCY.match(body):
        return False
    if (body[0].isspace() or body[-1].isspace()) and core[0].isdigit():
        return False
    plain = _INNER_GROUP.sub(" ", _INNER_GROUP.sub(" ", body))
    return _PROSE_WORDS.search(plain) is None and _NEW_SENTENCE.search(plain) is None


def _atomic_spans(text: str) -> list[_Span]:
    """Math spans and command brace groups of ``text``, sorted and disjoint."""
    tokens = [(m.start(), m.end(), _token_kind(m)) for m in _TOKEN.finditer(text)]
    where: dict[str, list[int]] = {}
    for k, (_, _, kind) in enumerate(tokens):
        where.setdefault(kind, []).append(k)

    def following(kind: str, k: int) -> int | None:
        """Index of the first token of ``kind`` after token ``k``."""
        found = where.get(kind, [])
        i = bisect.bisect_right(found, k)
        return found[i] if i < len(found) else None

    # Matching braces, paragraph by paragraph.
    partner: dict[int, int] = {}
    stack: list[int] = []
    for k, (_, _, kind) in enumerate(tokens):
        if kind == "{":
            stack.append(k)
        elif kind == "}" and stack:
            partner[stack.pop()] = k
        elif kind == "para":
            stack.clear()

    spans: list[_Span] = []
    k = 0
    while k < len(tokens):
        start, _, kind = tokens[k]
        close: int | None = None
        span_kind, cap = "inline", INLINE_MATH_CAP
        if kind in ("$", "\\("):
            close = following(_CLOSER[kind], k)
            again = following(kind, k) if kind == "\\(" else None
            if close is not None and again is not None and again < close:
                close = None
        elif kind in ("$$", "\\["):
            span_kind, cap = "display", DISPLAY_MATH_CAP
            close = following(_CLOSER[kind], k)
            again = following(kind, k) if kind == "\\[" else None
            if close is not None and again is not None and again < close:
                close = None
        elif kind.startswith("begin:") and kind[6:].rstrip("*") not in _PROSE_ENVIRONMENTS:
            span_kind, cap = "display", DISPLAY_MATH_CAP
            close = following("end:" + kind[6:], k)
        elif (
            kind == "{" and k > 0 and tokens[k - 1][1] == start and tokens[k - 1][2] in ("cmd", "}")
        ):
            span_kind = "group"
            close = partner.get(k)
        if close is not None:
            brk = following("para", k)
            stop = tokens[close][1]
            if (
                (brk is None or brk > close)
                and stop - start <= cap
                and (kind != "$" or _dollar_pair_is_math(text, start, tokens[close][0]))
            ):
                spans.append((start, stop, span_kind, tokens[close][0]))
                k = close + 1
                continue
        k += 1
    return spans


def _next_nonspace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _last_nonspace(text: str, stop: int) -> str:
    """The last non-whitespace character before ``stop`` ("" if there is none)."""
    pos = stop - 1
    while pos >= 0 and text[pos].isspace():
        pos -= 1
    return text[pos] if pos >= 0 else ""


def _starts_sentence(text: str, pos: int) -> bool:
    """Whether what follows the whitespace at ``pos`` clearly opens a new sentence."""
    nxt = _next_nonspace(text, pos)
    if nxt >= len(text) or "\n" in text[pos:nxt]:
        return True
    c = text[nxt]
    if c.isupper() or text.startswith("**", nxt):  # a capital or markdown bold
        return True
    return c in "\"'“‘([" and text[nxt + 1 : nxt + 2].isupper()


def _is_false_stop(text: str, dot: int, end: int) -> bool:
    """True when the period at ``dot`` ends an abbreviation, an initial or a step number."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:dot].lstrip("([\"'*")
    lower = word.lower()
    if lower in _TITLES:
        return True
    if lower in _ABBREVIATIONS:
        nxt = _next_nonspace(text, end)
        return not (nxt < len(text) and text[nxt].isupper())
    if len(word) == 1 and word.isupper():
        nxt = _next_nonspace(text, end)
        following = re.match(r"[A-Za-z]+", text[nxt : nxt + 20])
        return following is None or following.group().lower() not in _OPENERS
    if not word.isdigit():
        return False
    # A bare step number ("1." or "12.") that starts a line or follows a finished sentence
    # is a list marker, not the end of a sentence.
    last = start - 1
    while last >= 0 and text[last].isspace():
        last -= 1
    if last < 0 or "\n" in text[last + 1 : start]:
        return True
    # After an ellipsis ("1, 2, ... 9.") the number is not a step.
    return text[last] in ".!?:" and text[last - 1 : last + 1] != ".."


def _ends_sentence(text: str, m: re.Match[str]) -> bool:
    punct = m.group("punct")
    if "?" in punct:
        return True
    if "..." in punct or "…" in punct or "." not in punct:  # an ellipsis or "!"
        return _starts_sentence(text, m.end())
    return not _is_false_stop(text, m.start(), m.end())


def _body_ends_with_period(text: str, span: _Span) -> bool:
    start, _, _, body_stop = span
    pos = body_stop - 1
    while pos > start and text[pos].isspace():
        pos -= 1
    return text[pos] == "." and text[pos - 1] != "."


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return half-open character spans ``[(start, stop), ...]`` of the sentences of ``text``.

    The spans are contiguous, start at 0 and end at ``len(text)`` (empty text or
    whitespace-only text gives ``[]``). See the module docstring for the rules.

    Raises:
        TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences needs a str, got {type(text).__name__}")
    if not text.strip():
        return []
    spans = _atomic_spans(text)
    starts = [s[0] for s in spans]

    def inside(pos: int) -> bool:
        k = bisect.bisect_right(starts, pos) - 1
        return k >= 0 and pos < spans[k][1]

    cuts: set[int] = set()
    for m in _TERMINAL.finditer(text):
        if not inside(m.start()) and _ends_sentence(text, m):
            cuts.add(m.end())
    display_starts: set[int] = set()
    display_ends: dict[int, _Span] = {}
    for span in spans:
        if span[2] == "group":
            continue
        if span[2] == "display":
            display_starts.add(span[0])
            display_ends[span[1]] = span
        after = text[span[1] : span[1] + 1]
        if _body_ends_with_period(text, span) and (after.isspace() or after.isupper()):
            cuts.add(span[1])
        elif span[2] == "display" and _CAPITALIZED_WORD.match(text, span[1]):
            cuts.add(span[1])  # "\\[ ... \\]Because ...": a display ends an unpunctuated sentence
    for m in _NEXT_LINE.finditer(text):
        i, nxt = m.start(), m.end()
        if inside(i):
            continue
        before = _last_nonspace(text, i)
        # "We have\n\\[ x = 2 \\]": an unfinished line continues into its display equation.
        if nxt in display_starts and before and before not in ".!?":
            continue
        # "\\[ x = 2 \\]\nwhere x is ...": a display continued in lower case.
        prev_end = i
        while prev_end > 0 and text[prev_end - 1].isspace():
            prev_end -= 1
        display = display_ends.get(prev_end)
        if (
            display is not None
            and m.group().count("\n") == 1
            and text[nxt : nxt + 1].islower()
            and not _body_ends_with_period(text, display)
        ):
            continue
        cuts.add(i)
    # Each cut moves forward over whitespace so the separator stays with the earlier sentence.
    boundaries: set[int] = set()
    for cut in cuts:
        pos = _next_nonspace(text, cut)
        if 0 < pos < len(text):
            boundaries.add(pos)
    edges = [0, *sorted(boundaries), len(text)]
    pieces = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    # Leading whitespace-only piece (e.g. the newline after <think>) joins the first sentence.
    if len(pieces) > 1 and not text[pieces[0][0] : pieces[0][1]].strip():
        pieces = [(0, pieces[1][1]), *pieces[2:]]
    return pieces
