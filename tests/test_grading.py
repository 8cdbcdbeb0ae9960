"""grading: extraction rules, the hand-checked verdict fixture, timeouts that cannot hang."""

from __future__ import annotations

import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoning_circuits import grading
from reasoning_circuits.grading import (
    Grade,
    answer_segment,
    extract_answer,
    gold_answer,
    grade,
    grade_frame,
    grade_many,
    grades_to_frame,
)

CASES = Path(__file__).parent / "fixtures" / "grading_cases.jsonl"


def cases():
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line]


# ------------------------------------------------------------------ the hand-checked fixture
def test_fixture_is_large_and_balanced():
    rows = cases()
    assert len(rows) >= 100
    verdicts = [r["correct"] for r in rows]
    assert 0.3 < sum(verdicts) / len(verdicts) < 0.7  # neither side trivially satisfied
    assert {r["kind"] for r in rows} == {"math", "gsm8k"}


def test_fixture_verdicts():
    """Every hand-written verdict (and reason, where given) is reproduced."""
    rows = cases()
    wrong = []
    for kind in ("math", "gsm8k"):
        for think in ("required", "optional"):
            group = [r for r in rows if r["kind"] == kind and r.get("think", "required") == think]
            grades = grade_many(
                [r["response"] for r in group],
                [r["gold"] for r in group],
                kind=kind,
                think=think,
            )
            for row, g in zip(group, grades):
                if g.correct != row["correct"] or row.get("reason", g.reason) != g.reason:
                    wrong.append((row["note"], row["gold"], g))
    assert wrong == []


def test_same_final_number_failures_are_graded_wrong():
    """generation.same_final_number accepts both of these (same last number)."""
    a = grade("<think>x</think> $\\boxed{\\frac{11}{3}}$", "\\frac{14}{3}")
    b = grade("<think>x</think> $\\boxed{2\\sqrt{3}}$", "4\\sqrt{3}")
    assert (a.correct, a.reason, a.extracted) == (False, "wrong", "\\frac{11}{3}")
    assert (b.correct, b.reason, b.extracted) == (False, "wrong", "2\\sqrt{3}")
    assert grade("</think> $\\boxed{\\frac{14}{3}}$", "\\frac{14}{3}").correct
    assert grade("</think> $\\boxed{\\sqrt{48}}$", "4\\sqrt{3}").correct


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize("depth", [0, 1, 2, 5, 30])
def test_boxed_nested_to_any_depth(depth):
    inner = "{1+\\frac{2}" * depth + "x" + "}" * depth
    assert extract_answer(f"</think> so \\boxed{{{inner}}} done") == inner


_ATOMS = st.sampled_from(["a", "1", "+", " ", "\\frac", "\\{", "\\}", "^"])
# Random text with balanced braces (escaped braces never count), nested up to ~6 levels.
BALANCED = st.recursive(
    st.lists(_ATOMS, max_size=3).map("".join),
    lambda inner: st.lists(st.one_of(_ATOMS, inner.map(lambda s: "{" + s + "}")), max_size=4).map(
        "".join
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(BALANCED)
def test_boxed_content_is_exactly_the_braced_text(content):
    response = f"</think>\nThe answer is $\\boxed{{{content}}}$ and 7."
    expected = content.strip() or "7"  # an empty box is skipped, the last number remains
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("\\boxed 5", "5"),
        ("\\boxed 5.", "5"),
        ("\\fbox{12}", "12"),
        ("\\boxed {3}", "3"),
        ("$\\boxed{\\{1,2\\}}$", "\\{1,2\\}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{3} and the echo \\boxed{}", "3"),
        ("\\boxed{\\boxed{4}}", "4"),
        ("She makes 18 dollars.\n#### 18", "18"),
        ("#### 1,000\nDone.", "1,000"),
        ("The answer is 42.", "42"),
        ("It costs -3.5 dollars", "-3.5"),
        ("so 3-5 is what we write", "5"),
        ("about 1,234,567 people", "1,234,567"),
        ("roughly 3/4 of it", "3/4"),
        ("x2 and y3", None),
        ("I do not know.", None),
    ],
)
def test_extraction_rules(answer, expected):
    assert extract_answer("<think>7 \\boxed{9}</think>" + answer) == expected


def test_gsm8k_extraction_is_canonical():
    assert extract_answer("</think> \\boxed{\\$1,000}", "gsm8k") == "1000"
    assert extract_answer("</think> \\boxed{\\frac{7}{2}}", "gsm8k") == "3.5"
    assert extract_answer("</think> \\boxed{\\frac{7}{3}}", "gsm8k") == "7/3"
    assert extract_answer("</think> #### -12", "gsm8k") == "-12"
    assert extract_answer("</think> \\boxed{2\\times 9}", "gsm8k") == "2\\times 9"


def test_fallback_can_be_switched_off():
    assert extract_answer("</think> The answer is 12.", fallback=False) is None
    g = grade("</think> The answer is 12.", "12", fallback=False)
    assert (g.correct, g.reason, g.source) == (False, "no_answer", None)
    assert grade("</think> The answer is 12.", "12").source == "last_number"


def test_unclosed_last_box_is_malformed():
    g = grade("</think> \\boxed{3} then \\boxed{\\frac{1}{2", "3")
    assert (g.correct, g.reason, g.extracted) == (False, "malformed", None)
    # an unclosed box followed by a complete one: the complete one is the answer
    assert grade("</think> \\boxed{\\frac{1}{2 oops. \\boxed{3}", "3").correct


def test_degenerate_answers_are_fast():
    """A looping generation (thousands of unclosed boxes, a megabyte of digits) is read in
    linear time."""
    start = time.monotonic()
    assert extract_answer("</think>" + "\\boxed{" * 20000 + "\\boxed{}") is None
    assert extract_answer("</think>" + "7 " * 500_000) == "7"
    assert grade("</think>" + "\\boxed{1" * 20000, "1").reason == "malformed"
    assert time.monotonic() - start < 2.0


# ------------------------------------------------------------------ the answer segment
def test_answer_segment_rules():
    assert answer_segment("Q <think> r </think> A") == " A"
    assert answer_segment("r </think> A") == " A"  # completion after a prompt ending in <think>
    # a </think> quoted before <think> does not count; the first one after <think> does
    assert answer_segment("say </think> <think> r </think> A </think> B") == " A </think> B"
    assert answer_segment("Q <think> r") is None
    assert answer_segment("plain answer") is None
    assert answer_segment("plain answer", think="optional") == "plain answer"
    assert answer_segment("Q <think> r", think="optional") is None


def test_reasoning_numbers_never_count():
    response = "Q: 2+3? <think>\nIt is 5. \\boxed{5}\n#### 5\n</think>\nI give up."
    g = grade(response, "5")
    assert (g.correct, g.reason) == (False, "no_answer")
    g = grade("<think>\nthe answer is \\boxed{5}", "5")
    assert (g.correct, g.reason) == (False, "unfinished")


def test_second_think_close_is_malformed():
    g = grade("<think>r</think> \\boxed{5} </think> \\boxed{5}", "5")
    assert (g.correct, g.reason) == (False, "malformed")


# ------------------------------------------------------------------ golds and numbers
def test_gold_answer():
    assert gold_answer("Janet sells 9 eggs.\n#### 1,000", "gsm8k") == "1000"
    assert gold_answer(72, "gsm8k") == "72"
    assert gold_answer("-3", "gsm8k") == "-3"
    assert gold_answer("so it is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer("  p - q ") == "p - q"
    with pytest.raises(ValueError, match="not a number"):
        gold_answer("#### seven", "gsm8k")
    with pytest.raises(ValueError, match="empty"):
        gold_answer("  $ $ ")
    with pytest.raises(ValueError, match="unclosed"):
        gold_answer("\\boxed{1")
    with pytest.raises(TypeError):
        gold_answer(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("18", Fraction(18)),
        ("18.00", Fraction(18)),
        ("\\$1,234.50", Fraction(246900, 200)),
        ("10,\\!000", Fraction(10000)),
        ("1{,}000", Fraction(1000)),
        ("-\\frac{7}{2}", Fraction(-7, 2)),
        ("\\dfrac72", Fraction(7, 2)),
        ("50\\%", Fraction(50)),
        ("18 dollars", Fraction(18)),
        ("\\text{18 apples}", Fraction(18)),
        (".5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("2\\sqrt{3}", None),
        ("3 and 4", None),
        ("x=5", None),
        ("1/0", None),
    ],
)
def test_numbers(text, value):
    assert grading._as_number(text) == value


# ------------------------------------------------------------------ values and options
def test_grade_value_checks():
    with pytest.raises(ValueError, match="contradicts"):
        Grade(True, "1", "wrong", "1")
    with pytest.raises(ValueError, match="reason"):
        Grade(False, "1", "bad", "1")  # type: ignore[arg-type]
    g = Grade(False, None, "timeout", "1", None, "", seconds=2.0)
    assert g == Grade(False, None, "timeout", "1", None, "", seconds=0.5)  # time not compared
    assert json.loads(json.dumps(g.to_dict()))["reason"] == "timeout"


def test_option_and_input_refusals():
    with pytest.raises(ValueError, match="did you mean 'math'"):
        grade("</think>1", "1", kind="maths")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="think"):
        grade("</think>1", "1", think="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 responses but 1 golds"):
        grade_many(["a", "b"], ["1"])
    with pytest.raises(TypeError, match="not one string"):
        grade_many("abc", "abc")
    with pytest.raises(ValueError, match="timeout"):
        grade("</think>1", "1", timeout=0)
    with pytest.raises(ValueError, match="workers"):
        grade_many(["</think>1"], ["1"], workers=0)
    with pytest.raises(TypeError, match="response must be a str"):
        grade(None, "1")  # type: ignore[arg-type]


def test_duplicates_are_verified_once_and_paired_back():
    responses = ["</think> \\boxed{0.5}", "</think> \\boxed{2/4}", "</think> \\boxed{0.5}"]
    golds = ["\\frac12", "\\frac12", "\\frac13"]
    grades = grade_many(responses, golds)
    assert [g.correct for g in grades] == [True, True, False]
    assert [g.gold for g in grades] == golds


def test_frames():
    frame = pd.DataFrame(
        {"response": ["</think> \\boxed{4}", "<think> 4"], "answer": ["4", "4"]}, index=["a", "b"]
    )
    out = grade_frame(frame, gold="answer", prefix="g_")
    assert list(out.index) == ["a", "b"]
    assert list(out["g_correct"]) == [True, False]
    assert list(out["g_reason"]) == ["correct", "unfinished"]
    assert "g_correct" not in frame.columns  # a copy
    with pytest.raises(KeyError, match=r"response=\.\.\. and gold="):
        grade_frame(frame)
    table = grades_to_frame(grade_many(list(frame["response"]), ["4", "4"]))
    assert list(table.columns) == [
        "correct",
        "extracted",
        "reason",
        "gold",
        "source",
        "detail",
        "seconds",
    ]


# ------------------------------------------------------------------ timeouts
def test_pathological_expression_stops_at_the_timeout():
    grade("</think> \\boxed{x+1}", "1+x")  # start the workers outside the timed part
    start = time.monotonic()
    g = grade("</think> \\boxed{2^{2^{2^{2^{2^{2}}}}}}", "5", timeout=1.0)
    elapsed = time.monotonic() - start
    assert (g.correct, g.reason) == (False, "timeout")
    assert g.seconds <= 1.0 + 0.05
    assert elapsed < 1.0 + 0.5
    # the worker survives and keeps grading
    assert grade("</think> \\boxed{\\frac{2}{4}}", "0.5").correct


# A stand-in worker that speaks the protocol: it hangs in C (no alarm, ignores signals) on
# "slow", exits on "crash", and answers at once otherwise.
FAKE_WORKER = r"""
import json, sys, time, signal
signal.signal(signal.SIGALRM, signal.SIG_IGN)
print(json.dumps({"ready": "fake"}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if job["pred"] == "slow":
        time.sleep(3600)
    if job["pred"] == "crash":
        sys.exit(3)
    print(json.dumps({"ok": job["pred"] == job["gold"]}), flush=True)
"""


def test_hung_worker_is_killed_at_the_deadline_and_replaced():
    pool = grading._Pool(FAKE_WORKER)
    try:
        jobs = [{"gold": "1", "pred": p} for p in ("slow", "1", "slow", "2", "crash", "1")]
        start = time.monotonic()
        results = pool.run(jobs, timeout=0.5, workers=2)
        elapsed = time.monotonic() - start
    finally:
        pool.close()
    assert [("timeout" in r, r.get("ok"), "error" in r) for r in results] == [
        (True, None, False),
        (False, True, False),
        (True, None, False),
        (False, False, False),
        (False, None, True),
        (False, True, False),
    ]
    assert all(r["seconds"] < 0.5 + 0.2 for r in results)
    assert results[0]["hard"] is True
    assert elapsed < 10  # two kills at 0.5 s plus restarts of a tiny worker


def test_worker_without_math_verify_raises_import_error():
    pool = grading._Pool('import json; print(json.dumps({"fatal": "No module named x"}))')
    try:
        with pytest.raises(ImportError, match=r"pip install -U 'math-verify>=0\.8'"):
            pool.run([{"gold": "1", "pred": "2"}], timeout=1.0, workers=1)
    finally:
        pool.close()


def test_crash_verdict_is_wrong_with_the_cause():
    pending = grading._Pending("2", "boxed", "1")
    g = grading._verdict(pending, {"error": "math-verify worker exited", "seconds": 0.1})
    assert (g.correct, g.reason) == (False, "wrong")
    assert "worker exited" in g.detail
    g = grading._verdict(pending, {"timeout": True, "hard": True, "seconds": 0.5})
    assert (g.correct, g.reason) == (False, "timeout")
    assert "killed" in g.detail


def test_grading_from_a_thread():
    """math-verify's own timeout needs the main thread; the workers do not."""
    out: list[object] = []

    def work():
        try:
            out.append(grade("</think> \\boxed{\\sqrt{12}}", "2\\sqrt{3}"))
        except Exception as err:  # pragma: no cover - reported below
            out.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert len(out) == 1 and isinstance(out[0], Grade) and out[0].correct
