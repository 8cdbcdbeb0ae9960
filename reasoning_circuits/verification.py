"""Check the arithmetic a reasoning trace writes down, exactly.

A reasoning model computes in prose: ``She makes 9 * 2 = $18 a day``, ``\\(3 \\times 4 = 12
= 6 + 6\\)``, ``20% of 50 = 10``, ``10/3 ≈ 3.33``. :func:`verify_arithmetic` finds every
such *claim* in a text and re-computes it with exact rational arithmetic
(:class:`fractions.Fraction`, never floats). Each relation between two numeric sides is one
:class:`ArithmeticClaim` with the computed side (``expression``), the written side
(``stated``), the exact value (``correct_value``) and the verdict (``ok``).

What counts as a claim
----------------------
The text is read as a stream of tokens (numbers, operators, parentheses, relations, words);
sentence punctuation (``.`` not followed by a digit, ``?``, ``!`` not used as a factorial,
``,`` not used as a thousands separator, ``:``, ``;``), a line break (unless the line ends in
an operator or the next starts with ``=``; line breaks inside math spans are spaces), GSM8K's
``<<``/``>>`` and the edges of inline or display math spans (found by
:mod:`reasoning_circuits.sentences`, which tells ``$x$`` from ``$5``) end a run. Inside a
run, relations (``=``, ``≈``, ``≡``, the words *equals*, *is equal to*, *is*, *gives*,
*makes*, *yields*, and *is approximately*) split it into sides. A side is the longest piece
next to the relation that parses as an arithmetic expression. A chain ``a = b = c`` yields
one claim per link (``a = b``, ``b = c``).

* Operators: ``+ - * × · \\times \\cdot`` (and ``x`` between two quantities, ``3 x 4``),
  ``/ ÷ \\div``, ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac``, ``^`` (and ``**`` between digits),
  ``\\sqrt{}`` (exact roots only), postfix ``!``, *squared*, *cubed*, ``mod``/``\\bmod``,
  the words *plus*, *minus*, *times*, *multiplied by*, *divided by*, and *of* (``3/4 of 20``).
  Juxtaposition without a space multiplies (``2(3+4)``, ``(3)(4)``), except that an integer
  glued to ``\\frac`` is a mixed number (``1\\frac{1}{4}``). Usual precedence: ``-2^2 = -4``.
* Numbers: ``1,234``, ``1{,}234``, ``10,\\!000`` (thousands), decimals ``12.50`` and ``.5``,
  repeating decimals ``0.\\overline{3}``, mixed
  numbers ``1 1/2``, percentages ``20%``/``20\\%``/``20 percent`` (= 1/5), the multiplier
  words *dozen*, *hundred*, *thousand*, *million*, *billion*, negatives.
* Ignored: currency signs (``$5``, ``\\$5``, ``£``, ``€``), LaTeX delimiters (``\\(``, ``\\)``,
  ``$``, ``\\[``, ``\\]``), ``\\left``/``\\right``, ``\\boxed``, ``\\text{}``, markdown ``**``,
  alignment ``&``, and unit words after a quantity (``3 apples + 4 apples = 7 apples``,
  ``12 cm``, ``$50/hour``).

Not claims (no verdict, no alarm):

* A link with a side that is not a number: unknowns and assignments (``x + 3 = 7``,
  ``c = b*3``); the numeric links of a chain are still checked (``c=b*3=8*3=4`` checks
  ``8*3 = 4``).
* A chain with no operation at all (``x = 5``, ``Day 3 = 10``, ratios ``3:4 = 6:8``, times
  ``10:30``, ranges ``3-5``, dates, list numbers ``1.``): a bare number equal to a bare number
  is a definition or a label, not a computation.
* A side cut off by something the checker cannot read: a side whose neighbour is an
  operator or a multiplier word (``half of 10 + 2 = 7``, ``twice 5 + 3 = 13``,
  ``total - 3 = 9``; but ``a total of 3 + 4`` is prose), another number (``5 1 + 2``), or a
  glued ``|``, ``_``, ``@``, ``\\dots`` (absolute values, subscripts, custom operators).
* A word relation (*is*, *gives*, ...) whose left side computes nothing (``Day 3 is 2 × 5``
  checks nothing on the left).
* ``a + p%`` with a bare percentage added to a plain number (``50 + 20% = 60`` is calculator
  shorthand for ``50 × 1.2``; it is ambiguous, so it is skipped).
* Sums of different known units (``1 hour + 30 minutes``), and a failed check whose two sides
  carry different known units or currencies (``60 minutes × 2 = 2 hours``, ``$0.054 = 5.4
  cents``): these may be conversions.
* A failed check of percentages of an unstated base against a number (``48 = 100% + 20%``), a
  failed first link whose bare left side restates an operand of the right (``drank 1.5 quarts =
  4 * 1.5 = 6``), a share stated with a word relation (``2/5 is equal to 12.8 hectares``), and a
  claim the text itself rejects (``1 = \\sqrt{9} + 4, which is not true``).
* Values that are not exact rationals (``\\sqrt{2}``, ``\\pi``, fractional powers), huge
  powers and factorials (``2^{100000}``).
* ``≡`` without a ``(mod n)`` clause.

Precision rule
--------------
Let ``t`` be the exact value of the computed side and ``s`` the stated number, written with
``d`` decimals.

* ``t == s`` is right.
* With ``=``: a stated *integer* must be exact (``7 × 1.5 = 10`` is wrong); a stated decimal is
  right when ``|t − s| ≤ ½·10^−d``, i.e. ``t`` rounds to ``s`` at the shown precision (half up
  or half down both accepted): ``10/3 = 3.33`` and ``10/3 = 3.3`` are right, ``10/3 = 3.5``
  and ``10/3 = 3.34`` are wrong, and ``2/3 = 0.666`` is wrong (it is truncated, not rounded).
* With ``≈`` (``\\approx``, ``~``, *is approximately/about/roughly*), integers too round:
  ``10/3 ≈ 3`` is right, ``10/3 ≈ 4`` is wrong.
* A stated number ending in ``...`` (``3.333...``) is right when ``|t − s| < 10^−d``
  (truncated or rounded).
* A stated percentage ``P%`` is compared as ``P/100`` and, failing that, as ``P`` (the
  ``0.2 × 100 = 20%`` convention), each at its shown precision.
* When both sides are bare numbers (``12 = 12.0`` inside a chain) the coarser precision is used.
  When both sides are expressions, equality is exact.
* Run-on chains: ``16 - 3 = 13 - 4 = 9`` writes a running total. If a link ``a = b op c``
  fails but ``a`` equals ``b`` (the first number of the right side), the link is judged as
  ``a = b`` (rule ``"run_on"``) and the chain continues with ``b op c = ...``.
* Modular arithmetic: ``verify_arithmetic(text, modulus=10)`` judges integer links modulo 10
  (the tiny reasoner writes ``8*3=4``). A ``(mod n)``/``\\pmod{n}`` clause in the text does the
  same for the relations before it in its run, and ``a ≡ b (mod n)`` is checked as a
  congruence. A stated integer is compared modulo n with a value whose denominator is
  invertible mod n (``17^{-1} ≡ 44 \\pmod{83}``). Without either, ``8*3=4`` is an ordinary
  (wrong) claim.
* Division by zero gives ``correct_value == "undefined"`` and ``ok=False``.

Known limits: numbers in words (*three*) are not read; rounding carried inside operands is not
propagated (``3.33 × 3 = 10`` is wrong under ``=``; write ``≈``); units are not converted;
prose that puts an unrelated number right before an operator can still be misread.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from reasoning_circuits.sentences import _atomic_spans

__all__ = [
    "ArithmeticClaim",
    "ClaimRule",
    "Relation",
    "claims_to_frame",
    "verify_arithmetic",
]

Relation = Literal["=", "≈", "≡"]
"""How two sides are related: equal, approximately equal, congruent (with a modulus)."""

ClaimRule = Literal["exact", "rounded", "percent_points", "modulo", "run_on", "undefined"]
"""Which part of the precision rule decided a claim (see the module docstring)."""

Undefined = Literal["undefined"]

_MAX_EXPONENT = 10_000
_MAX_BITS = 100_000
_MAX_FACTORIAL = 1_000
_MAX_UNIT_WORDS = 3
_SEARCH_WINDOW = 80  # tokens searched on each side of a relation


# --------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class ArithmeticClaim:
    """One checked relation between a computed side and a stated side.

    Attributes:
        expression: the computed side as written (e.g. ``"3 \\times 4"``).
        stated: the stated side as written (e.g. ``"12"``, ``"$15"``, ``"6 + 6"``).
        correct_value: the exact value of ``expression``, or ``"undefined"`` (division by 0).
        stated_value: the exact value of ``stated`` (a percentage as a fraction, 20% → 1/5).
        ok: whether the claim holds under the precision rule.
        span: half-open character span ``[start, stop)`` of the claim in the checked text.
        relation: ``"="``, ``"≈"`` or ``"≡"``.
        rule: the part of the rule that decided (``"exact"``, ``"rounded"``,
            ``"percent_points"``, ``"modulo"``, ``"run_on"``, ``"undefined"``; a wrong claim
            carries the strictest rule that was tried).
        decimals: decimals shown in the stated number (``None`` when it is an expression).
        modulus: the modulus used, or ``None``.
    """

    expression: str
    stated: str
    correct_value: Fraction | Undefined
    stated_value: Fraction | Undefined
    ok: bool
    span: tuple[int, int]
    relation: Relation = "="
    rule: ClaimRule = "exact"
    decimals: int | None = None
    modulus: int | None = None

    @property
    def correct_text(self) -> str:
        """The correct value as a short string: an integer, a decimal at the stated
        precision, or a fraction with a 6-decimal approximation."""
        return format_value(self.correct_value, self.decimals)

    def describe(self) -> str:
        """``"8*3 = 4 is right"`` or ``"8*3 = 4 should be 24"``."""
        rel = self.relation
        verdict = "is right" if self.ok else f"should be {self.correct_text}"
        return f"{self.expression} {rel} {self.stated} {verdict}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; exact values as strings (``"10/3"``, ``"undefined"``)."""
        return {
            "expression": self.expression,
            "stated": self.stated,
            "correct_value": str(self.correct_value),
            "stated_value": str(self.stated_value),
            "ok": self.ok,
            "span": list(self.span),
            "relation": self.relation,
            "rule": self.rule,
            "decimals": self.decimals,
            "modulus": self.modulus,
        }


def format_value(value: Fraction | str, decimals: int | None = None) -> str:
    """Format an exact value: an integer as is, else rounded to ``decimals`` when given, else
    ``"p/q (≈ x.xxxxxx)"``."""
    if isinstance(value, str):
        return value
    if value.denominator == 1:
        return str(value.numerator)
    if decimals:
        scaled = abs(value) * 10**decimals
        rounded = math.floor(scaled + Fraction(1, 2))  # half away from zero
        sign = "-" if value < 0 and rounded else ""
        digits = str(abs(rounded)).rjust(decimals + 1, "0")
        return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"
    return f"{value} (≈ {float(value):.6g})"


def claims_to_frame(claims: Sequence[ArithmeticClaim]) -> Any:
    """A pandas DataFrame, one row per claim (exact values as strings)."""
    import pandas as pd

    columns = list(ArithmeticClaim.__dataclass_fields__)
    return pd.DataFrame([c.to_dict() for c in claims], columns=columns)


# --------------------------------------------------------------------------- tokens
@dataclass
class _Tok:
    kind: str  # num var word op lp rp rel pct post break modc
    text: str
    start: int
    stop: int
    space: bool = False  # whitespace right before the token
    op: str = ""  # normalised operator / relation / postfix
    value: Fraction | None = None
    decimals: int = 0
    truncated: bool = False
    word_rel: bool = False  # relation written as a word ("is", "equals")
    currency: str = ""  # "dollar" after $, "euro" after €, ...


_CMD_OPS = {"times": "*", "cdot": "*", "ast": "*", "div": "/", "bmod": "mod", "mod": "mod"}
_CMD_RELS = {"approx": "≈", "simeq": "≈", "sim": "≈", "thickapprox": "≈", "equiv": "≡"}
_CMD_TRANSPARENT = {
    "left", "right", "displaystyle", "textstyle", "boxed", "big", "Big", "bigl", "bigr",
    "Bigl", "Bigr", "quad", "qquad", "limits", "mathbf", "bf", "bm", "boldsymbol", "color",
}  # fmt: skip
_CMD_TEXT = {"text", "textbf", "textit", "mathrm", "mbox", "mathit", "operatorname", "textrm"}
_CMD_BREAK = {
    "neq", "ne", "le", "leq", "ge", "geq", "lt", "gt", "pm", "mp", "implies", "Rightarrow",
    "rightarrow", "to", "iff", "Leftrightarrow", "begin", "end", "item", "hline", "newline",
    "cr",
}  # fmt: skip
_CMD_GAP = {"cdots", "ldots", "dots", "vdots", "vert", "lvert", "rvert", "mid", "Vert"}
_WORD_OPS = {"plus": "+", "minus": "-", "times": "*", "of": "of", "mod": "mod"}
_WORD_RELS = {"equals": "=", "is": "=", "gives": "=", "makes": "=", "yields": "="}
_APPROX_WORDS = {"approximately", "approx", "about", "roughly", "around", "nearly"}
_POSTFIX_WORDS = {
    "percent": "%",
    "squared": "sq",
    "cubed": "cube",
    "dozen": "dozen",
    "hundred": "hundred",
    "thousand": "thousand",
    "million": "million",
    "billion": "billion",
}
_MULTIPLIERS = {
    "dozen": 12,
    "hundred": 100,
    "thousand": 1000,
    "million": 10**6,
    "billion": 10**9,
}
# Words that modify the quantity next to them in ways the checker does not read.
_QUANTITY_WORDS = {
    "twice", "double", "doubled", "triple", "tripled", "thrice", "half", "halved", "quarter",
    "square", "cube", "root", "sqrt", "log", "ln", "sin", "cos", "tan", "exp", "factorial",
    "average", "mean", "negative", "inverse", "reciprocal", "least", "most",
}  # fmt: skip
# Words that cannot be part of a unit after a number.
_STOP_WORDS = {
    "and", "or", "is", "are", "was", "were", "be", "been", "being", "so", "then", "the",
    "that", "this", "these", "those", "which", "who", "we", "i", "you", "he", "she", "it",
    "they", "to", "for", "with", "from", "by", "in", "on", "at", "as", "than", "if", "but",
    "because", "since", "when", "while", "not", "no", "yes", "wait", "hmm", "also", "there",
    "here", "would", "will", "can", "could", "should", "must", "has", "have", "had", "do",
    "does", "did", "let", "me", "us", "now", "thus", "hence", "therefore", "into", "an",
    "equal", "more", "less", "fewer", "left", "remaining", "after", "before", "over",
    "under", "divided", "multiplied", "gives", "makes", "yields", "equals", "about",
    "approximately", "roughly", "around", "nearly", "all", "only", "just", "what", "how", "off",
    "why", "where", "our", "my", "his", "her", "their", "its",
}  # fmt: skip
# "a total of 3 + 4": after these words "of" is prose, not a multiplication.
_PROSE_OF = {
    "total", "sum", "product", "difference", "quotient", "cost", "costs", "price", "value",
    "result", "amount", "profit", "revenue", "area", "perimeter", "volume", "number",
    "count", "length", "width", "height", "distance", "weight", "speed", "rate", "savings",
    "earnings", "remainder", "balance", "income", "bill",
}  # fmt: skip
_CURRENCIES = {"$": "dollar", "£": "sterling", "€": "euro", "¥": "yen", "₹": "rupee"}
_BREAK_CHARS = set(".,;:?!'\"“”‘’—`")

_UNIT_ALIASES = {
    "feet": "foot", "ft": "foot", "inches": "inch", "in": "inch", "pennies": "penny",
    "cents": "cent", "hrs": "hour", "hr": "hour", "h": "hour", "mins": "minute",
    "min": "minute", "secs": "second", "sec": "second", "s": "second", "lbs": "pound",
    "lb": "pound", "oz": "ounce", "yd": "yard", "yds": "yard", "kg": "kilogram",
    "g": "gram", "mg": "milligram", "km": "kilometer", "m": "meter", "cm": "centimeter",
    "mm": "millimeter", "ml": "milliliter", "l": "liter", "litre": "liter", "metre": "meter",
    "tbsp": "tablespoon", "tsp": "teaspoon", "dollar": "dollar", "bucks": "dollar",
}  # fmt: skip
_KNOWN_UNITS = {
    "second", "minute", "hour", "day", "week", "month", "year", "decade", "century",
    "millimeter", "centimeter", "meter", "kilometer", "inch", "foot", "yard", "mile",
    "milligram", "gram", "kilogram", "pound", "ounce", "ton", "tonne", "milliliter", "liter",
    "gallon", "quart", "pint", "cup", "tablespoon", "teaspoon", "dollar", "cent", "penny",
    "nickel", "dime", "sterling", "euro", "yen", "rupee",
}  # fmt: skip

_TOKEN_RE = re.compile(
    r"(?P<modc>\(\s*(?:\\bmod|\\mod|mod)\s*(?P<modn>\d+)\s*\)|\\pmod\s*\{\s*(?P<pmodn>\d+)\s*\})"
    r"|(?P<nl>\n|\\\\)"
    r"|(?P<ws>[^\S\n]+|\\[,;:! ]|~(?=\s*\\)|\\(?:quad|qquad)(?![A-Za-z]))"
    r"|(?P<gsm><<|>>)"
    r"|(?P<based>\d+_(?:\{[^{}\n]{0,10}\}|[A-Za-z0-9]))"  # 1010_2, 100_{2}: not decimal
    r"|(?P<rep>(?<![\d.])(?P<rep_int>\d*)\.(?P<rep_fix>\d*)\\overline\{(?P<rep_cyc>\d{1,30})\})"
    r"|(?P<num>(?:(?<![\d.])\d{1,3}(?:(?:,|\{,\}|\\,|,\\!)\d{3})+(?![\d])|\d+|(?<![\d\w])(?=\.\d))"
    r"(?:\.\d+)?)(?P<ell>\.\.\.|…)?"
    r"|(?P<cmd>\\[A-Za-z]+)"
    r"|(?P<esc>\\[^A-Za-z\n])"
    r"|(?P<ident>[A-Za-z]+(?:['’][A-Za-z]+|_(?:\{[^{}\n]{0,20}\}|[A-Za-z0-9]))?)"
    r"|(?P<star2>\*\*)"
    r"|(?P<other>.)",
    re.DOTALL,
)
_BULLET_RE = re.compile(r"[^\S\n]*(?:[-*+•]|\d{1,2}\)|[a-z]\))[^\S\n]")
_CONTINUATION_RE = re.compile(r"\s*&?\s*(?:=|≈|\\approx|\\times|×|\\cdot)")
_SYMBOLS = {
    "+": ("op", "+"),
    "-": ("op", "-"),
    "−": ("op", "-"),
    "*": ("op", "*"),
    "×": ("op", "*"),
    "·": ("op", "*"),
    "⋅": ("op", "*"),
    "/": ("op", "/"),
    "÷": ("op", "/"),
    "^": ("op", "^"),
    "=": ("rel", "="),
    "≈": ("rel", "≈"),
    "≅": ("rel", "≈"),
    "≃": ("rel", "≈"),
    "≡": ("rel", "≡"),
    "(": ("lp", "("),
    "[": ("lp", "("),
    ")": ("rp", ")"),
    "]": ("rp", ")"),
    "%": ("pct", "%"),
}


def _number_token(m: re.Match[str], space: bool) -> _Tok:
    raw = m.group("num")
    digits = raw.replace("{,}", "").replace("\\,", "").replace("\\!", "").replace(",", "")
    whole, _, frac = digits.partition(".")
    value = Fraction(int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac))
    return _Tok(
        "num",
        m.group(),
        m.start(),
        m.end(),
        space,
        value=value,
        decimals=len(frac),
        truncated=m.group("ell") is not None,
    )


def _repeating_token(m: re.Match[str], space: bool) -> _Tok:
    """``0.\\overline{3}`` = 1/3, ``0.1\\overline{6}`` = 1/6: an exact value."""
    whole, fixed, cycle = m.group("rep_int"), m.group("rep_fix"), m.group("rep_cyc")
    base = Fraction(int(whole or "0")) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value = base + Fraction(int(cycle), 10 ** len(fixed) * (10 ** len(cycle) - 1))
    return _Tok("num", m.group(), m.start(), m.end(), space, value=value, decimals=0)


def _math_layout(text: str) -> tuple[list[tuple[int, int]], set[int]]:
    """Math spans (inline and display) and the positions of their delimiter characters."""
    spans: list[tuple[int, int]] = []
    edges: set[int] = set()
    for start, stop, kind, body_stop in _atomic_spans(text):
        if kind == "group":
            continue
        spans.append((start, stop))
        opener = 2 if text.startswith(("$$", "\\(", "\\["), start) else 1
        if text.startswith("\\begin", start):
            continue  # \begin/\end are commands: they break by themselves
        edges.update(range(start, start + opener))
        edges.update(range(body_stop, stop))
    return spans, edges


def _tokenize(text: str) -> list[_Tok]:
    math_spans, edges = _math_layout(text)
    starts = [a for a, _ in math_spans]

    def in_math(pos: int) -> bool:
        k = bisect.bisect_right(starts, pos) - 1
        return k >= 0 and pos < math_spans[k][1]

    toks: list[_Tok] = []
    braces: list[bool] = []  # True: the brace group is a parenthesis; False: transparent
    transparent_next_brace = False
    space = False
    line_start = True
    pos = 0
    n = len(text)

    currency = ""

    def emit(kind: str, start: int, stop: int, op: str = "") -> None:
        nonlocal space, currency
        toks.append(_Tok(kind, text[start:stop], start, stop, space, op=op))
        space = False
        currency = ""

    while pos < n:
        if line_start:
            line_start = False
            b = _BULLET_RE.match(text, pos)
            if b:
                emit("break", b.start(), b.end())
                pos = b.end()
                continue
        m = _TOKEN_RE.match(text, pos)
        assert m is not None  # the last alternative matches any character
        kind = m.lastgroup
        start, stop = m.start(), m.end()
        pos = stop
        if kind == "ell":  # lastgroup of a number with an ellipsis
            kind = "num"
        if kind == "rep_cyc":
            kind = "rep"
        if kind == "ws":
            space = True
        elif start in edges:  # an inline or display math delimiter ends a run
            emit("break", start, stop)
            pos = max(pos, start + 1)
        elif kind == "nl":
            if text[start] == "\n" and in_math(start):
                space = True
                continue
            prev = toks[-1] if toks else None
            cont = prev is not None and prev.kind in ("op", "rel") and prev.op != "of"
            if cont or _CONTINUATION_RE.match(text, stop):
                space = True
            else:
                emit("break", start, stop)
            line_start = text[start] == "\n"
        elif kind == "modc":
            modulus = m.group("modn") or m.group("pmodn")
            emit("modc", start, stop)
            toks[-1].value = Fraction(int(modulus))
        elif kind == "based":
            emit("var", start, stop)
        elif kind == "gsm":
            emit("break", start, stop)
        elif kind in ("num", "rep"):
            tok = _number_token(m, space) if kind == "num" else _repeating_token(m, space)
            tok.currency = currency
            toks.append(tok)
            space, currency = False, ""
        elif kind == "cmd":
            pos = _command(text, m, toks, emit, pos)
            if m.group()[1:] in _CMD_TEXT and text.startswith("{", pos):
                transparent_next_brace = True
        elif kind == "esc":
            ch = m.group()[1]
            if ch == "%":
                emit("pct", start, stop, "%")
            elif ch == "|":
                emit("gap", start, stop)
            elif ch == "$":
                currency = "dollar"
            elif ch in "()[]":
                pass  # unpaired math delimiters are transparent
            elif ch == "{":
                emit("lp", start, stop, "(")
            elif ch == "}":
                emit("rp", start, stop, ")")
            else:
                emit("break", start, stop)
        elif kind == "ident":
            emit("word", start, stop)
            toks[-1].op = m.group().lower()
        elif kind == "star2":
            before = text[start - 1 : start]
            after = text[stop : stop + 1]
            if (before.isdigit() or before == ")") and (after.isdigit() or after == "("):
                emit("op", start, stop, "^")
            # otherwise markdown bold: transparent
        else:
            ch = m.group()
            if ch == "{":
                if transparent_next_brace:
                    braces.append(False)
                    transparent_next_brace = False
                    space = True  # a word inside \text{} is a separate word
                else:
                    braces.append(True)
                    emit("lp", start, stop, "(")
            elif ch == "}":
                if not braces or braces.pop():
                    emit("rp", start, stop, ")")
            elif ch in _SYMBOLS:
                k, op = _SYMBOLS[ch]
                emit(k, start, stop, op)
            elif ch == "–":  # en dash: minus with spaces, a range without
                after = text[stop : stop + 1]
                if space and after.isspace():
                    emit("op", start, stop, "-")
                else:
                    emit("break", start, stop)
            elif ch == "~":
                emit("rel", start, stop, "≈")
            elif ch == "!":
                after = text[stop : stop + 1]
                prev = toks[-1] if toks else None
                fact = (
                    not space
                    and prev is not None
                    and prev.kind in ("num", "rp")
                    and after != "="
                    and (after == "" or not after.isalnum())
                )
                emit("post" if fact else "break", start, stop, "!")
            elif ch in _CURRENCIES:
                currency = _CURRENCIES[ch]
            elif ch == "&":
                pass  # alignment
            elif ch in "²³":
                emit("post", start, stop, "sq" if ch == "²" else "cube")
            elif ch in _BREAK_CHARS:
                emit("break", start, stop)
            else:  # "|", "_", "@", "#", "<", ">", "…": the checker cannot read what it joins
                emit("gap", start, stop)
    return _postprocess(toks)


def _command(
    text: str,
    m: re.Match[str],
    toks: list[_Tok],
    emit: Any,
    pos: int,
) -> int:
    """Emit the tokens of a LaTeX command; return the position to continue from."""
    name = m.group()[1:]
    start, stop = m.start(), m.end()
    if name in _CMD_OPS:
        emit("op", start, stop, _CMD_OPS[name])
    elif name in _CMD_RELS:
        emit("rel", start, stop, _CMD_RELS[name])
    elif name in ("frac", "dfrac", "tfrac", "cfrac"):
        emit("op", start, stop, "frac")
        two = re.compile(r"\s*(\d)(\d)").match(text, stop)
        if two:  # \frac12
            for g in (1, 2):
                digit = Fraction(int(two.group(g)))
                toks.append(_Tok("num", two.group(g), two.start(g), two.end(g), value=digit))
            return two.end()
    elif name == "sqrt":
        if text[stop : stop + 1] == "[":  # n-th roots: not read
            emit("var", start, stop)
        else:
            emit("op", start, stop, "sqrt")
    elif name in ("left", "right"):
        nxt = text[stop : stop + 1]
        if nxt == ".":
            return stop + 1
        if nxt == "|":
            emit("gap", start, stop + 1)
            return stop + 1
    elif name in _CMD_GAP:
        emit("gap", start, stop)
    elif name in _CMD_BREAK:
        emit("break", start, stop)
    elif name in _CMD_TRANSPARENT or name in _CMD_TEXT:
        pass
    else:
        emit("var", start, stop)  # \pi, \alpha, \log, ...: an unknown quantity
    return pos


def _merge(toks: list[_Tok], i: int, j: int, kind: str, op: str) -> None:
    """Replace tokens i..j-1 by one token."""
    first, last = toks[i], toks[j - 1]
    merged = _Tok(kind, f"{first.text}..{last.text}", first.start, last.stop, first.space, op=op)
    toks[i:j] = [merged]


def _postprocess(toks: list[_Tok]) -> list[_Tok]:
    """Words to operators, relations, units and variables; merge multi-token relations."""
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.kind == "word":
            w = t.op
            nxt_w = nxt.op if nxt is not None and nxt.kind == "word" else ""
            if w in ("divided", "multiplied") and nxt_w == "by":
                _merge(toks, i, i + 2, "op", "/" if w == "divided" else "*")
            elif w == "is" and nxt_w == "equal":
                third = toks[i + 2] if i + 2 < len(toks) else None
                stop = i + 3 if third is not None and third.op == "to" else i + 2
                _merge(toks, i, stop, "rel", "=")
                toks[i].word_rel = True
            elif w in ("is", "equals") and nxt_w in _APPROX_WORDS:
                _merge(toks, i, i + 2, "rel", "≈")
                toks[i].word_rel = True
            elif w == "comes" and nxt_w == "to":
                _merge(toks, i, i + 2, "rel", "=")
                toks[i].word_rel = True
            elif w in _WORD_RELS:
                t.kind, t.op, t.word_rel = "rel", _WORD_RELS[w], True
            elif w in _WORD_OPS:
                t.kind, t.op = "op", _WORD_OPS[w]
            elif w in _POSTFIX_WORDS:
                t.kind, t.op = ("pct", "%") if w == "percent" else ("post", _POSTFIX_WORDS[w])
            elif w in _QUANTITY_WORDS:
                t.kind = "qword"
            elif w in ("x", "X") and _is_times_x(toks, i):
                t.kind, t.op = "op", "*"
            elif len(t.text) == 1 or "_" in t.text:
                t.kind = "var"
            elif (
                not t.space
                and i
                and toks[i - 1].kind == "num"
                and _unit_name(t.op) not in _KNOWN_UNITS
            ):
                t.kind = "var"  # letters glued to a number: a unit only if known ("12cm")
        elif t.kind == "rel" and nxt is not None:
            if nxt.kind == "word" and nxt.op in _APPROX_WORDS:
                _merge(toks, i, i + 2, "rel", "≈")
            elif nxt.kind == "rel" and not nxt.word_rel and not t.word_rel:
                op = "≈" if "≈" in (t.op, nxt.op) else t.op
                _merge(toks, i, i + 2, "rel", op)
                continue
        i += 1
    return toks


def _is_times_x(toks: list[_Tok], i: int) -> bool:
    """``x`` between two quantities is a multiplication sign (``3 x 4``, ``3x4``)."""
    if i == 0 or i + 1 >= len(toks):
        return False
    prev, nxt = toks[i - 1], toks[i + 1]
    left_ok = prev.kind in ("num", "rp", "pct") or (prev.kind == "word" and toks[i].space)
    right_ok = nxt.kind in ("num", "lp") or (nxt.kind == "op" and nxt.op in ("frac", "sqrt"))
    spaced = toks[i].space and nxt.space
    glued = not toks[i].space and not nxt.space and prev.kind == "num" and nxt.kind == "num"
    return left_ok and right_ok and (spaced or glued)


def _unit_name(word: str) -> str:
    """Normalised unit name: ``"Hours"`` → ``"hour"``, ``"inches^2"`` → ``"inch^2"``."""
    base, caret, power = word.partition("^")
    if caret:
        return _unit_name(base) + "^" + power
    w = word.lower()
    if w in _UNIT_ALIASES:
        return _UNIT_ALIASES[w]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return _UNIT_ALIASES.get(w, w)


# --------------------------------------------------------------------------- parsing
class _ParseError(Exception):
    pass


class _Undefined(Exception):
    """Division by zero somewhere in an expression."""


@dataclass
class _Node:
    kind: str  # num var bin neg func post group
    op: str = ""
    children: tuple[_Node, ...] = ()
    tok: _Tok | None = None
    units: tuple[str, ...] = ()  # unit words after the quantity
    first: int = 0  # token range [first, last) in the run
    last: int = 0
    pct: bool = False

    def has_op(self) -> bool:
        if self.kind in ("bin", "func"):
            return True
        if self.kind == "post" and self.op != "%":
            return True
        return any(c.has_op() for c in self.children)

    def leaves(self) -> list[_Node]:
        if self.kind in ("num", "var"):
            return [self]
        return [leaf for c in self.children for leaf in c.leaves()]


_Value = Fraction | None  # None: not an exact rational we can compute


def _known_units(node: _Node) -> set[str]:
    out: set[str] = set()
    for leaf in node.leaves():
        if leaf.tok is not None and leaf.tok.currency:
            out.add(leaf.tok.currency)
        if leaf.units:
            u = _unit_name(leaf.units[-1])
            if u.partition("^")[0] in _KNOWN_UNITS:
                out.add(u)
    return out


def _percent_leaves(node: _Node) -> tuple[int, int]:
    """(number of percentage leaves, number of leaves)."""
    if node.kind == "post" and node.op == "%":
        inner = node.children[0]
        return (1, 1) if inner.kind == "num" else _percent_leaves(inner)
    if node.kind in ("num", "var"):
        return 0, 1
    counts = [_percent_leaves(c) for c in node.children]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _is_share(node: _Node) -> bool:
    """A bare proper fraction of two integers, ``2/5``: a share of some unstated whole."""
    while node.kind == "group":
        node = node.children[0]
    if node.kind != "bin" or node.op not in ("/", "frac"):
        return False
    a, b = node.children
    if not (_is_integer_literal(a) and _is_integer_literal(b)):
        return False
    assert a.tok is not None and b.tok is not None
    return a.tok.value is not None and b.tok.value is not None and a.tok.value < b.tok.value


def _evaluate(node: _Node) -> _Value:
    """Exact value; ``None`` if not computable; raises :class:`_Undefined` on x/0."""
    if node.kind == "num":
        assert node.tok is not None and node.tok.value is not None
        return node.tok.value
    if node.kind == "var":
        return None
    if node.kind == "group":
        return _evaluate(node.children[0])
    if node.kind == "neg":
        v = _evaluate(node.children[0])
        return None if v is None else -v
    if node.kind == "post":
        v = _evaluate(node.children[0])
        if v is None:
            return None
        if node.op == "%":
            return v / 100
        if node.op == "sq":
            return v * v
        if node.op == "cube":
            return v * v * v
        if node.op == "!":
            if v.denominator != 1 or not 0 <= v <= _MAX_FACTORIAL:
                return None
            return Fraction(math.factorial(int(v)))
        return v * _MULTIPLIERS[node.op]
    if node.kind == "func":  # sqrt
        v = _evaluate(node.children[0])
        if v is None or v < 0:
            return None
        p, q = math.isqrt(v.numerator), math.isqrt(v.denominator)
        if p * p != v.numerator or q * q != v.denominator:
            return None
        return Fraction(p, q)
    a_node, b_node = node.children
    if node.op in ("+", "-"):
        ua, ub = _known_units(a_node), _known_units(b_node)
        if ua and ub and ua != ub:
            return None  # "1 hour + 30 minutes": a conversion the checker does not do
        # "50 + 20%": calculator shorthand, ambiguous
        if _bare_percent(a_node) != _bare_percent(b_node):
            return None
    a, b = _evaluate(a_node), _evaluate(b_node)
    if a is None or b is None:
        return None
    if node.op == "+":
        return a + b
    if node.op == "-":
        return a - b
    if node.op in ("*", "of"):
        return a * b
    if node.op in ("/", "frac"):
        if b == 0:
            raise _Undefined
        return a / b
    if node.op == "mod":
        if b == 0:
            raise _Undefined
        if a.denominator != 1 or b.denominator != 1:
            return None
        return a % b
    if node.op == "^":
        if b.denominator != 1 or abs(b) > _MAX_EXPONENT:
            return None
        bits = max(a.numerator.bit_length(), a.denominator.bit_length())
        if bits * abs(b) > _MAX_BITS:
            return None
        if a == 0 and b < 0:
            raise _Undefined
        return a ** int(b)
    raise AssertionError(f"unknown operator {node.op!r}")


def _bare_percent(node: _Node) -> bool:
    while node.kind == "group":
        node = node.children[0]
    return node.kind == "post" and node.op == "%" and node.children[0].kind == "num"


class _Parser:
    """Recursive descent over a token slice; :meth:`parse` must consume all of it."""

    def __init__(self, toks: Sequence[_Tok], lo: int, hi: int) -> None:
        self.toks, self.i, self.hi = toks, lo, hi

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < self.hi else None

    def parse(self) -> _Node:
        node = self.expr()
        if self.i != self.hi:
            raise _ParseError
        return node

    def expr(self) -> _Node:
        left = self.term()
        while (t := self.peek()) is not None and t.kind == "op" and t.op in ("+", "-"):
            self.i += 1
            right = self.term()
            left = _Node("bin", t.op, (left, right), first=left.first, last=right.last)
        return left

    def term(self) -> _Node:
        left = self.unary()
        while (t := self.peek()) is not None:
            if t.kind == "op" and t.op in ("*", "/", "of", "mod"):
                self.i += 1
                right = self.unary()
                op = t.op
            elif not t.space and self._starts_operand(t) and self._juxtaposable(left):
                right = self.unary()
                # "1\frac{1}{4}" is a mixed number; other juxtapositions multiply
                mixed = t.kind == "op" and t.op == "frac" and _is_integer_literal(left)
                op = "+" if mixed else "*"
            else:
                break
            left = _Node("bin", op, (left, right), first=left.first, last=right.last)
        return left

    @staticmethod
    def _starts_operand(t: _Tok) -> bool:
        return t.kind in ("lp", "var") or (t.kind == "op" and t.op in ("frac", "sqrt"))

    def _juxtaposable(self, left: _Node) -> bool:
        prev = self.toks[self.i - 1]
        return prev.kind in ("num", "rp", "var", "pct") and not left.units

    def unary(self) -> _Node:
        t = self.peek()
        if t is not None and t.kind == "op" and t.op in ("+", "-"):
            first = self.i
            self.i += 1
            inner = self.unary()
            if t.op == "+":
                return inner
            return _Node("neg", "-", (inner,), first=first, last=inner.last)
        return self.power()

    def power(self) -> _Node:
        base = self.postfix()
        t = self.peek()
        if t is not None and t.kind == "op" and t.op == "^":
            self.i += 1
            exponent = self.unary()
            return _Node("bin", "^", (base, exponent), first=base.first, last=exponent.last)
        return base

    def postfix(self) -> _Node:
        node = self.primary()
        while (t := self.peek()) is not None:
            if t.kind == "pct" and not node.pct:
                self.i += 1
                node = _Node("post", "%", (node,), first=node.first, last=self.i, pct=True)
            elif t.kind == "post":
                self.i += 1
                node = _Node("post", t.op, (node,), first=node.first, last=self.i)
            else:
                break
        if node.kind in ("num", "group", "post"):
            self._units(node)
        return node

    def _units(self, node: _Node) -> None:
        """Unit words after a quantity: up to three words, and ``/word`` (``$50/hour``)."""
        words: list[str] = []
        while len(words) < _MAX_UNIT_WORDS and (t := self.peek()) is not None:
            if t.kind == "word" and t.op not in _STOP_WORDS:
                words.append(t.op)
                self.i += 1
            elif (
                t.kind == "op"
                and t.op == "/"
                and self.i + 1 < self.hi
                and self.toks[self.i + 1].kind == "word"
                and self.toks[self.i + 1].op not in _STOP_WORDS
            ):
                words.append("per " + self.toks[self.i + 1].op)
                self.i += 2
            elif words and t.kind == "post" and t.op in ("sq", "cube"):  # cm²
                words[-1] += "^" + ("2" if t.op == "sq" else "3")
                self.i += 1
            elif (
                words
                and t.kind == "op"
                and t.op == "^"
                and self.i + 1 < self.hi
                and self.toks[self.i + 1].kind == "num"
            ):  # cm^2
                words[-1] += "^" + self.toks[self.i + 1].text
                self.i += 2
            else:
                break
        if words:
            target = node
            while target.kind in ("post", "group") and target.children:
                target = target.children[0]
            target.units = tuple(words)
            node.last = self.i

    def primary(self) -> _Node:
        t = self.peek()
        if t is None:
            raise _ParseError
        first = self.i
        if t.kind == "num":
            self.i += 1
            return self._mixed(_Node("num", tok=t, first=first, last=self.i))
        if t.kind == "var":
            self.i += 1
            return _Node("var", tok=t, first=first, last=self.i)
        if t.kind == "lp":
            self.i += 1
            inner = self.expr()
            close = self.peek()
            if close is None or close.kind != "rp":
                raise _ParseError
            self.i += 1
            return _Node("group", children=(inner,), first=first, last=self.i)
        if t.kind == "op" and t.op == "frac":
            self.i += 1
            num = self.primary()
            den = self.primary()
            return _Node("bin", "frac", (num, den), first=first, last=self.i)
        if t.kind == "op" and t.op == "sqrt":
            self.i += 1
            inner = self.primary()
            return _Node("func", "sqrt", (inner,), first=first, last=self.i)
        raise _ParseError

    def _mixed(self, whole: _Node) -> _Node:
        """``1 1/2``: a whole number, a space, and a proper fraction of two integers."""
        if self.i + 2 >= self.hi:
            return whole
        a, slash, b = self.toks[self.i], self.toks[self.i + 1], self.toks[self.i + 2]
        w = whole.tok
        ok = (
            w is not None
            and w.decimals == 0
            and a.kind == "num"
            and a.space
            and a.decimals == 0
            and slash.kind == "op"
            and slash.op == "/"
            and not slash.space
            and b.kind == "num"
            and not b.space
            and b.decimals == 0
            and a.value is not None
            and b.value is not None
            and 0 < a.value < b.value
        )
        after = self.toks[self.i + 3] if self.i + 3 < self.hi else None
        if not ok or (after is not None and after.kind == "op" and after.op in ("^", "/")):
            return whole
        first = whole.first
        self.i += 3
        frac = _Node(
            "bin",
            "/",
            (
                _Node("num", tok=a, first=first + 1, last=first + 2),
                _Node("num", tok=b, first=first + 3, last=first + 4),
            ),
            first=first + 1,
            last=self.i,
        )
        return _Node("bin", "+", (whole, frac), first=first, last=self.i)


def _is_integer_literal(node: _Node) -> bool:
    tok = node.tok
    return node.kind == "num" and not node.units and tok is not None and tok.decimals == 0


def _try_parse(toks: Sequence[_Tok], lo: int, hi: int) -> _Node | None:
    if lo >= hi:
        return None
    try:
        return _Parser(toks, lo, hi).parse()
    except (_ParseError, IndexError, RecursionError):
        return None


# --------------------------------------------------------------------------- sides
@dataclass
class _Side:
    node: _Node
    lo: int  # token range in the run
    hi: int


_OPERANDISH = ("num", "rp", "pct", "var", "post")


def _suffix_side(toks: Sequence[_Tok], lo: int, hi: int) -> _Side | None:
    """The longest piece ``toks[s:hi]`` that parses, or ``None`` if none does or it is cut off."""
    for s in range(max(lo, hi - _SEARCH_WINDOW), hi):
        node = _try_parse(toks, s, hi)
        if node is None:
            continue
        if s > lo and _cut_before(toks, lo, s):
            return None
        return _Side(node, s, hi)
    return None


def _cut_before(toks: Sequence[_Tok], lo: int, s: int) -> bool:
    """Whether the token before a side starting at ``s`` cuts it off (see module docstring)."""
    before, first = toks[s - 1], toks[s]
    # "a total of 3 + 4" is prose; "half of 10 + 2" and "20% of 5 + 1" are cut off
    prose_of = (
        before.op == "of" and s - 2 >= lo and toks[s - 2].kind == "word"
        and toks[s - 2].op in _PROSE_OF
    )  # fmt: skip
    if (before.kind in ("op", "qword") or before.kind in _OPERANDISH) and not prose_of:
        return True
    if before.kind == "gap" and not first.space:
        return True
    if before.kind not in ("word", "gap"):
        return False
    if first.kind == "op" and first.op == "+":
        return True  # nobody writes a unary plus after prose: "... + 3"
    if first.kind == "op" and first.op == "-":
        # "Then -3 + 5" is a negative number; "total - 3", "\dots - 3" are cut off
        glued = s + 1 < len(toks) and not toks[s + 1].space
        return before.kind == "gap" or not (first.space and glued)
    return False


def _prefix_side(toks: Sequence[_Tok], lo: int, hi: int) -> _Side | None:
    """The longest piece ``toks[lo:e]`` that parses, or ``None`` if none does or it is cut off."""
    for e in range(min(hi, lo + _SEARCH_WINDOW), lo, -1):
        node = _try_parse(toks, lo, e)
        if node is None:
            continue
        if e < hi:
            after = toks[e]
            if after.kind in ("qword", "num") or (after.kind == "op" and after.op != "of"):
                return None
            if after.kind == "gap" and not after.space:
                return None
        return _Side(node, lo, e)
    return None


def _bare(node: _Node) -> tuple[Fraction, int, bool, bool] | None:
    """A single written number: (value as written, decimals, percent, truncated)."""
    sign = 1
    pct = False
    while True:
        if node.kind == "group":
            node = node.children[0]
        elif node.kind == "neg":
            sign = -sign
            node = node.children[0]
        elif node.kind == "post" and node.op == "%" and not pct:
            pct = True
            node = node.children[0]
        else:
            break
    if node.kind != "num" or node.tok is None or node.tok.value is None:
        return None
    return sign * node.tok.value, node.tok.decimals, pct, node.tok.truncated


def _leftmost_number(node: _Node) -> _Node | None:
    while node.kind == "bin":
        node = node.children[0]
    return node if node.kind == "num" else None


def _within(t: Fraction, s: Fraction, tol: Fraction, strict: bool) -> bool:
    return abs(t - s) < tol if strict else abs(t - s) <= tol


def _modular(t: Fraction, s: Fraction, modulus: int) -> bool:
    """Whether ``t ≡ s (mod m)`` is meaningful: ``s`` an integer and ``t``'s denominator
    invertible mod m (``17^{-1} ≡ 44 (mod 83)``)."""
    return s.denominator == 1 and math.gcd(t.denominator, modulus) == 1


def _congruent(t: Fraction, s: Fraction, modulus: int) -> bool:
    return (t - s).numerator % modulus == 0


def _judge(
    t: Fraction,
    stated: _Node,
    other_bare: tuple[Fraction, int, bool, bool] | None,
    relation: str,
    modulus: int | None,
) -> tuple[bool, ClaimRule, Fraction, int | None]:
    """Verdict for computed value ``t`` against the stated side.

    Returns (ok, rule, stated value, decimals shown).
    """
    bare = _bare(stated)
    s_value = _evaluate(stated)
    assert s_value is not None
    if bare is None:
        if modulus and _modular(t, s_value, modulus):
            return _congruent(t, s_value, modulus), "modulo", s_value, None
        return t == s_value, "exact", s_value, None
    written, d, pct, truncated = bare
    if other_bare is not None:  # two bare numbers: the coarser precision
        d = min(d, other_bare[1])
        truncated = truncated or other_bare[3]
    if modulus and _modular(t, s_value, modulus):
        return _congruent(t, s_value, modulus), "modulo", s_value, d
    if t == s_value:
        return True, "exact", s_value, d
    approx = relation == "≈" or d > 0 or truncated
    unit = Fraction(1, 10**d)
    tol = unit if truncated else unit / 2
    if approx and _within(t, s_value, tol / (100 if pct else 1), truncated):
        return True, "rounded", s_value, d
    if pct and (t == written or (approx and _within(t, written, tol, truncated))):
        return True, "percent_points", s_value, d
    return False, "rounded" if approx else "exact", s_value, d


def _link_claim(
    text: str,
    toks: Sequence[_Tok],
    left: _Side,
    right: _Side,
    rel: _Tok,
    modulus: int | None,
    first_link: bool,
) -> ArithmeticClaim | None:
    """The claim made by ``left rel right``, or ``None`` when it is not a numeric claim."""
    relation = rel.op
    if relation == "≡" and modulus is None:
        return None
    lv: Fraction | Undefined | None
    rv: Fraction | Undefined | None
    try:
        lv = _evaluate(left.node)
    except _Undefined:
        lv = "undefined"
    try:
        rv = _evaluate(right.node)
    except _Undefined:
        rv = "undefined"
    if lv is None or rv is None:
        return None

    def src(side: _Side | _Node, trim: bool = False) -> tuple[str, int, int]:
        lo, hi = (side.lo, side.hi) if isinstance(side, _Side) else (side.first, side.last)
        while trim and hi - 1 > lo and toks[hi - 1].kind == "word":  # trailing unit words
            hi -= 1
        a, b = toks[lo].start, toks[hi - 1].stop
        return text[a:b], a, b

    lb, rb = _bare(left.node), _bare(right.node)
    if rb is None and lb is not None:
        comp, stated = right, left
    else:
        comp, stated = left, right
    c_value = lv if comp is left else rv
    s_value = rv if comp is left else lv
    expr_text, a0, b0 = src(comp)
    stated_text, a1, b1 = src(stated, trim=True)
    span = (min(a0, a1), max(b0, b1))
    rel_op: Relation = "≈" if relation == "≈" else "≡" if relation == "≡" else "="
    if isinstance(c_value, str) or isinstance(s_value, str):
        return ArithmeticClaim(
            expr_text,
            stated_text,
            c_value,
            s_value,
            False,
            span,
            rel_op,
            "undefined",
            None,
            modulus,
        )
    other = (lb if stated is right else rb) if (lb and rb) else None
    ok, rule, stated_value, decimals = _judge(c_value, stated.node, other, relation, modulus)
    if not ok and stated is right and rb is None and lb is None:
        # run-on chain: "16 - 3 = 13 - 4 = 9" means 16 - 3 = 13, then 13 - 4 = 9
        lead = _leftmost_number(right.node)
        if lead is not None:
            ok2, _, lead_value, d2 = _judge(c_value, lead, None, relation, modulus)
            if ok2:
                lead_text, _, b2 = src(lead, trim=True)
                return ArithmeticClaim(
                    expr_text,
                    lead_text,
                    c_value,
                    lead_value,
                    True,
                    (a0, b2),
                    rel_op,
                    "run_on",
                    d2,
                    modulus,
                )
    # "4 students drank 1.5 quarts = 4 * 1.5 = 6": a label restating an operand
    restated = lb is not None and any(
        leaf.tok is not None and leaf.tok.value == lb[0] for leaf in comp.node.leaves()
    )
    if not ok and restated and rb is None and stated is left and first_link:
        return None
    if not ok:
        inner = stated.node
        while inner.kind == "group":
            inner = inner.children[0]
        if inner.kind == "post" and inner.op in _MULTIPLIERS:
            # "240/12 = 20 dozen": the multiplier word names the unit
            ok, rule, _, decimals = _judge(c_value, inner.children[0], other, relation, modulus)
    if not ok and _skip_failed(left, right, stated is left, rel):
        return None
    return ArithmeticClaim(
        expr_text,
        stated_text,
        c_value,
        stated_value,
        ok,
        span,
        rel_op,
        rule,
        decimals,
        modulus,
    )


def _skip_failed(left: _Side, right: _Side, stated_left: bool, rel: _Tok) -> bool:
    """Rules that turn a failed check into "not a claim" (see the module docstring)."""
    stated, comp = (left, right) if stated_left else (right, left)
    us, uc = _known_units(stated.node), _known_units(comp.node)
    if us and uc and not us & uc:
        return True  # different known units: possibly a conversion
    p_comp, n_comp = _percent_leaves(comp.node)
    if p_comp == n_comp and _percent_leaves(stated.node)[0] == 0:
        return True  # "48 = 100% + 20%": percentages of an unstated base
    # "2/5 is equal to 12.8 hectares": a share of a whole, in words
    return rel.word_rel and (_is_share(left.node) or _is_share(right.node))


@dataclass
class _Chain:
    sides: list[_Side | None] = field(default_factory=list)
    rels: list[_Tok] = field(default_factory=list)


def _chains(toks: list[_Tok]) -> list[_Chain]:
    """Split a run (no breaks inside) into chains ``side rel side rel side ...``."""
    rel_idx = [i for i, t in enumerate(toks) if t.kind == "rel"]
    if not rel_idx:
        return []
    bounds = [-1, *rel_idx, len(toks)]
    chains: list[_Chain] = []
    current = _Chain()
    for j in range(len(bounds) - 1):
        lo, hi = bounds[j] + 1, bounds[j + 1]
        first, last = j == 0, j == len(bounds) - 2
        whole = None if (first or last) else _try_parse(toks, lo, hi)
        if whole is not None:
            current.sides.append(_Side(whole, lo, hi))
            current.rels.append(toks[hi])
            continue
        if not first:  # the end of the chain so far
            current.sides.append(_prefix_side(toks, lo, hi))
            chains.append(current)
            current = _Chain()
        if not last:  # the start of the next chain
            current.sides.append(_suffix_side(toks, lo, hi))
            current.rels.append(toks[hi])
    return chains


# "1 = \sqrt{9} + 4, which is not true": the writer already rejects the equation.
_NEGATED = re.compile(
    r"[^.\n]{0,12}?(?:which|this|that|it)?\s*(?:is|'s)\s+(?:not\s+(?:true|correct|right)|false|"
    r"wrong|incorrect|impossible)|[$\\)\s,]*(?:\\neq|≠|is\s+false|doesn't\s+hold|does\s+not\s+hold)",
    re.IGNORECASE,
)


def verify_arithmetic(text: str, *, modulus: int | None = None) -> list[ArithmeticClaim]:
    """Find and check every arithmetic claim in ``text`` (see the module docstring).

    Args:
        text: any text: a sentence, a whole trace, LaTeX or plain prose.
        modulus: judge integer claims modulo this number (``10`` for the tiny reasoner's
            ``8*3=4``). ``None`` (default): ordinary arithmetic, except after a ``(mod n)``
            clause in the text.

    Returns:
        The claims in text order, one per numeric link of each chain. ``span`` indexes
        ``text``.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``modulus`` is not an integer ≥ 2.
    """
    if not isinstance(text, str):
        raise TypeError(f"verify_arithmetic needs a str, got {type(text).__name__}")
    if modulus is not None and (
        isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2
    ):
        raise ValueError(f"modulus must be an integer >= 2 or None, got {modulus!r}")
    toks = _tokenize(text)
    claims: list[ArithmeticClaim] = []
    run: list[_Tok] = []
    for tok in [*toks, _Tok("break", "", len(text), len(text))]:
        if tok.kind not in ("break", "modc"):
            run.append(tok)
            continue
        clause = int(tok.value) if tok.kind == "modc" and tok.value is not None else None
        claims.extend(_run_claims(text, run, modulus if clause is None else clause))
        run = []
    claims = [c for c in claims if not _NEGATED.match(text, c.span[1])]
    return sorted(claims, key=lambda c: c.span)


def _run_claims(text: str, run: list[_Tok], modulus: int | None) -> list[ArithmeticClaim]:
    out: list[ArithmeticClaim] = []
    for chain in _chains(run):
        sides = chain.sides
        computes = any(s is not None and s.node.has_op() for s in sides)
        if not computes and not (modulus and any(r.op == "≡" for r in chain.rels)):
            continue
        for k, rel in enumerate(chain.rels):
            left, right = sides[k], sides[k + 1]
            if left is None or right is None:
                continue
            if rel.word_rel and not left.node.has_op():
                continue
            claim = _link_claim(text, run, left, right, rel, modulus, k == 0)
            if claim is not None:
                out.append(claim)
    return out
