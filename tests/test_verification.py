"""Arithmetic verification: hand-checked fixture, precision rule, non-claims, properties."""

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoning_circuits.organism.task import make_problems
from reasoning_circuits.verification import (
    ArithmeticClaim,
    claims_to_frame,
    format_value,
    verify_arithmetic,
)

FIXTURE = Path(__file__).parent / "fixtures" / "verification_sentences.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def test_fixture_is_large_and_covers_both_directions():
    assert len(ROWS) >= 60
    with_error = [r for r in ROWS if any(not c["ok"] for c in r["claims"])]
    all_correct = [r for r in ROWS if r["claims"] and all(c["ok"] for c in r["claims"])]
    no_claim = [r for r in ROWS if not r["claims"]]
    assert len(with_error) >= 15 and len(all_correct) >= 40 and len(no_claim) >= 15


@pytest.mark.parametrize("row", ROWS, ids=[str(r["id"]) for r in ROWS])
def test_fixture_sentence(row):
    """Every expected claim is found with the hand-computed value and verdict, and nothing
    else is reported (no false alarm on correct sentences, no claim in non-claims)."""
    got = verify_arithmetic(row["text"], modulus=row.get("modulus"))
    found = [(c.expression, c.stated, c.ok, str(c.correct_value)) for c in got]
    expected = [(c["expression"], c["stated"], c["ok"], c["correct"]) for c in row["claims"]]
    assert found == expected
    for claim in got:
        a, b = claim.span
        assert claim.expression in row["text"][a:b] and claim.stated in row["text"][a:b]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("10/3 = 3.33", True),
        ("10/3 = 3.3", True),
        ("10/3 = 3.333", True),
        ("10/3 = 3.5", False),
        ("10/3 = 3.34", False),
        ("10/3 = 3", False),  # an integer stated with "=" must be exact
        ("10/3 ≈ 3", True),
        ("10/3 ≈ 4", False),
        (r"10/3 \approx 3.3", True),
        ("10/3 is approximately 3.3", True),
        ("2/3 = 0.67", True),
        ("2/3 = 0.666", False),  # truncated, not rounded
        ("2/3 = 0.666...", True),  # an ellipsis allows truncation
        ("1/8 = 0.13", True),  # exactly half way: accepted
        ("1/8 = 0.12", True),
        ("1/8 = 0.11", False),
        ("7/2 = 3.50", True),
        ("1/3 = 33.3%", True),
        ("1/3 = 33%", False),
        ("1/3 ≈ 33%", True),
        (r"1/3 = 0.\overline{3}", True),
        (r"1/6 = 0.1\overline{6}", True),
        (r"1/6 = 0.1\overline{3}", False),
    ],
)
def test_precision_rule(text, ok):
    claims = verify_arithmetic(text)
    assert len(claims) == 1
    assert claims[0].ok is ok


@pytest.mark.parametrize(
    "text",
    [
        "x + 3 = 7",
        "Let n = 5.",
        "The ratio is 3:4.",
        "Born on 1999-12-31.",
        "It took 3-5 days.",
        "1. First step\n2. Second step",
        "At 10:30 we had 4 = 4 items.",
        "Then f(2) = 7.",
        "We need a + b = 10.",
        "17 ≡ 2",
        "Half of 10 + 2 = 7.",
        "3 + 4 = 8, which is not true.",
        "$3 and $4 = $7 total",  # no operation written
    ],
)
def test_not_claims(text):
    assert verify_arithmetic(text) == []


def test_assignment_chain_checks_only_numeric_links():
    [claim] = verify_arithmetic("c=b*3=8*3=4.")
    assert (claim.expression, claim.stated, claim.correct_value) == ("8*3", "4", 24)
    assert not claim.ok and claim.rule == "exact"
    [mod] = verify_arithmetic("c=b*3=8*3=4.", modulus=10)
    assert mod.ok and mod.rule == "modulo" and mod.modulus == 10
    [bad] = verify_arithmetic("c=b*3=8*3=5.", modulus=10)
    assert not bad.ok


def test_tiny_reasoner_traces_are_right_modulo_10():
    """The organism's generator (independent code) writes only correct mod-10 steps."""
    problems = make_problems(40, seed=3)
    n_claims = n_plain_wrong = 0
    for problem in problems:
        claims = verify_arithmetic(problem.reasoning, modulus=10)
        assert claims and all(c.ok for c in claims)
        n_claims += len(claims)
        steps = re.findall(r"(\d)([-+*])(\d)=(\d)", problem.reasoning)
        assert len(claims) == len(steps)
        plain = [c.ok for c in verify_arithmetic(problem.reasoning)]
        n_plain_wrong += plain.count(False)
    assert n_claims > 80 and n_plain_wrong > 0  # wrap-around steps are wrong in plain arithmetic


def test_congruence_clauses():
    assert [c.ok for c in verify_arithmetic("17 ≡ 2 (mod 5)")] == [True]
    assert [c.ok for c in verify_arithmetic("17 ≡ 3 (mod 5)")] == [False]
    assert [c.ok for c in verify_arithmetic(r"$8 \times 3 \equiv 4 \pmod{10}$")] == [True]
    # a modular inverse: 17 * 44 = 748 = 9 * 83 + 1
    assert [c.ok for c in verify_arithmetic(r"$17^{-1} \equiv 44 \pmod{83}$")] == [True]
    assert [c.ok for c in verify_arithmetic(r"$17^{-1} \equiv 45 \pmod{83}$")] == [False]


def test_chains_check_every_link_and_run_on_totals():
    claims = verify_arithmetic("3 × 4 = 12 = 6 + 6 = 2 × 7")
    assert [(c.expression, c.stated, c.ok) for c in claims] == [
        ("3 × 4", "12", True),
        ("6 + 6", "12", True),
        ("6 + 6", "2 × 7", False),
    ]
    run_on = verify_arithmetic("16 - 3 = 13 - 4 = 9")
    assert [c.rule for c in run_on] == ["run_on", "exact"] and all(c.ok for c in run_on)


def test_division_by_zero_is_a_wrong_claim():
    [claim] = verify_arithmetic("5/(3 - 3) = 0")
    assert claim.correct_value == "undefined" and not claim.ok and claim.rule == "undefined"


def test_huge_powers_are_skipped_not_computed():
    assert verify_arithmetic("2^{1000000} = 5 + 5") == []
    assert [c.ok for c in verify_arithmetic("2^{100} = 1267650600228229401496703205376")] == [True]


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="needs a str"):
        verify_arithmetic(b"3 + 4 = 7")  # type: ignore[arg-type]
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="modulus must be an integer >= 2"):
            verify_arithmetic("3 + 4 = 7", modulus=bad)  # type: ignore[arg-type]


def test_records_and_frame():
    claims = verify_arithmetic("So 10/3 = 3.33 and 3 × 15 = 40.")
    assert len(claims) == 2
    frame = claims_to_frame(claims)
    assert list(frame["ok"]) == [True, False]
    assert list(frame["correct_value"]) == ["10/3", "45"]
    json.dumps([c.to_dict() for c in claims])  # JSON-safe
    assert claims[1].describe() == "3 × 15 = 40 should be 45"
    assert claims[0].correct_text == "3.33"
    assert format_value(Fraction(1, 3)) == "1/3 (≈ 0.333333)"
    assert format_value(Fraction(-7, 8), 2) == "-0.88"
    assert isinstance(claims[0], ArithmeticClaim)


# --------------------------------------------------------------------------- properties
@st.composite
def expressions(draw, depth=0):
    """An integer expression tree as (kind, ...) with its exact value computed here."""
    if depth >= 2 or draw(st.booleans()):
        n = draw(st.integers(0, 20_000))
        return ("num", n), Fraction(n)
    op = draw(st.sampled_from(["+", "-", "*", "/"]))
    left, lv = draw(expressions(depth=depth + 1))
    right, rv = draw(expressions(depth=depth + 1))
    if op == "/" and rv == 0:
        op = "+"
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else 0}[op]
    return ("bin", op, left, right), value


MUL = {"plain": "*", "unicode": "×", "latex": r"\times", "cdot": r"\cdot"}


def render(node, style):
    if node[0] == "num":
        n = node[1]
        return f"{n:,}" if style == "unicode" else str(n)
    _, op, left, right = node
    a, b = render(left, style), render(right, style)
    if op == "/" and style in ("latex", "cdot"):
        return rf"\frac{{{a}}}{{{b}}}"
    symbol = {"*": MUL[style], "/": "÷" if style == "unicode" else "/"}.get(op, op)
    return f"({a} {symbol} {b})"


def render_value(value, style):
    if value.denominator == 1:
        n = value.numerator
        return f"{n:,}" if style == "unicode" and n >= 0 else str(n)
    if style in ("latex", "cdot"):
        sign = "-" if value < 0 else ""
        return rf"{sign}\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"
    return f"({value.numerator}/{value.denominator})"


WRAP = {
    "plain": "So {e} = {v} apples.",
    "unicode": "Then {e} = {v}, which we keep.",
    "latex": r"We get \({e} = {v}\).",
    "cdot": r"Hence ${e} = {v}$.",
}


@settings(max_examples=150, deadline=None)
@given(tree=expressions(), style=st.sampled_from(sorted(WRAP)), delta=st.integers(1, 50))
def test_random_expressions_verify_and_perturbations_are_flagged(tree, style, delta):
    node, value = tree
    if node[0] == "num":
        return  # a bare number is not a computation
    expr = render(node, style)
    right = WRAP[style].format(e=expr, v=render_value(value, style))
    claims = verify_arithmetic(right)
    assert [c.ok for c in claims] == [True], right
    assert claims[0].correct_value == value
    wrong = WRAP[style].format(e=expr, v=render_value(value + delta, style))
    [claim] = verify_arithmetic(wrong)
    assert not claim.ok and claim.correct_value == value, wrong


def decimal_text(units: int, decimals: int) -> str:
    """``units`` * 10**-decimals written with exactly ``decimals`` decimals."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


@settings(max_examples=150, deadline=None)
@given(num=st.integers(-10_000, 10_000), den=st.integers(1, 999), decimals=st.integers(1, 4))
def test_rounded_decimals_are_accepted_and_off_by_one_unit_is_not(num, den, decimals):
    value = Fraction(num, den)
    nearest = (
        int(value * 10**decimals + Fraction(1, 2))
        if value >= 0
        else -int(-value * 10**decimals + Fraction(1, 2))
    )
    [claim] = verify_arithmetic(f"{num}/{den} = {decimal_text(nearest, decimals)}")
    assert claim.ok and claim.decimals == decimals
    for off in (nearest - 1, nearest + 1):
        if abs(Fraction(off, 10**decimals) - value) > Fraction(1, 2 * 10**decimals):
            [bad] = verify_arithmetic(f"{num}/{den} = {decimal_text(off, decimals)}")
            assert not bad.ok


def test_doc_examples_run():
    """Every ```python block of docs/verification.md runs."""
    doc = Path(__file__).parent.parent / "docs" / "verification.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})
