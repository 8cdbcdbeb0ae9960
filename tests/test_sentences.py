import itertools
import json
import time
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reasoning_circuits import split_sentences
from reasoning_circuits.sentences import DISPLAY_MATH_CAP, INLINE_MATH_CAP

FIXTURE = Path(__file__).parent / "fixtures" / "sentences_real.jsonl"
REAL_CASES = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def pieces(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def stripped(text: str) -> list[str]:
    return [p.strip() for p in pieces(text)]


def assert_partition(text: str, spans: list[tuple[int, int]]) -> None:
    if not text.strip():
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a < b for a, b in spans)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(spans))


ALPHABET = [*"ab Z 1.2!?\n$\\[](){}e.g:…*", "\\(", "\\)", "\\[", "\\]", "$$", "\n\n", "5! "]


@given(st.lists(st.sampled_from(ALPHABET), max_size=60).map("".join))
@settings(max_examples=300, deadline=None)
def test_spans_cover_text_exactly(text):
    assert_partition(text, split_sentences(text))


@given(
    st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=40).map("".join),
    st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=40).map("".join),
)
@settings(max_examples=300, deadline=None)
def test_paragraphs_are_split_independently(a, b):
    # Nothing crosses a blank line (math, brace groups, pairing of $), except an unfinished
    # line running into a display equation, so the sentences of "A\n\nB" are those of A and
    # those of B, with a break between them.
    a, b = a.strip(), b.strip()
    assume(a and b and not b.startswith(("$$", "\\[", "\\begin")))
    offset = len(a) + 2
    joined = a + "\n\n" + b
    expected = {s for s, _ in split_sentences(a)} | {offset}
    expected |= {offset + s for s, _ in split_sentences(b)}
    assert {s for s, _ in split_sentences(joined)} == expected


@pytest.mark.parametrize("case", REAL_CASES, ids=[c["id"] for c in REAL_CASES])
def test_real_text_fixture(case):
    """Excerpts of MATH-500 solutions and GSM8K answers (verbatim, MIT) and R1-style snippets,
    with sentence boundaries checked by hand."""
    text = case["text"]
    assert_partition(text, split_sentences(text))
    assert stripped(text) == case["sentences"], case["note"]


def test_fixture_is_large_and_real():
    sources = {c["source"].split(":")[0] for c in REAL_CASES}
    assert {"math500", "gsm8k-test", "hand-written R1-style"} <= sources
    assert len(REAL_CASES) >= 36
    assert len({c["id"] for c in REAL_CASES}) == len(REAL_CASES)


# ------------------------------------------------------------------ the original rules


def test_decimals_are_not_split():
    assert pieces("The price is 12.50 dollars. Then 3.14 is pi.") == [
        "The price is 12.50 dollars. ",
        "Then 3.14 is pi.",
    ]


def test_abbreviations_and_initials_do_not_split():
    text = "We use e.g. the sum, i.e. a total. Dr. Smith and J. Doe agree. Next one."
    assert pieces(text) == [
        "We use e.g. the sum, i.e. a total. ",
        "Dr. Smith and J. Doe agree. ",
        "Next one.",
    ]


def test_abbreviation_before_a_capital_ends_the_sentence():
    assert stripped("The answer is no. Wait, check no. 5 and apples, pears, etc. Then stop.") == [
        "The answer is no.",
        "Wait, check no. 5 and apples, pears, etc.",
        "Then stop.",
    ]


def test_single_capital_before_a_sentence_opener_ends_the_sentence():
    assert stripped("Take point A. Then draw B. J. Doe agrees.") == [
        "Take point A.",
        "Then draw B. J. Doe agrees.",
    ]


def test_inline_latex_is_atomic():
    assert pieces("So $x = 2.5. y$ holds. Done.") == ["So $x = 2.5. y$ holds. ", "Done."]


def test_display_latex_stays_with_its_sentence():
    text = "We have\n\\[\nx = 2.\n\\]\nSo x is 2.\n$$a. b$$\nEnd."
    assert pieces(text) == ["We have\n\\[\nx = 2.\n\\]\n", "So x is 2.\n", "$$a. b$$\n", "End."]


def test_numbered_steps_are_sentences_and_numbers_are_not_sentence_ends():
    text = "1. Compute b.\n2. Add 3.\n3. Done. 4. Extra step."
    assert pieces(text) == ["1. Compute b.\n", "2. Add 3.\n", "3. Done. ", "4. Extra step."]


def test_number_at_end_of_sentence_still_splits():
    assert pieces("The total is 12. Then stop.") == ["The total is 12. ", "Then stop."]


def test_blank_lines_split_and_leading_whitespace_joins_first_sentence():
    assert pieces("\n\nfirst line\n\nsecond line\nthird") == [
        "\n\nfirst line\n\n",
        "second line\n",
        "third",
    ]


def test_question_and_exclamation_marks():
    assert pieces("Is it 4? Yes! Good.") == ["Is it 4? ", "Yes! ", "Good."]


def test_step_number_after_an_unpunctuated_line_is_a_list_marker():
    assert pieces("We have\n2. Add 3 to it.") == ["We have\n", "2. Add 3 to it."]


# ------------------------------------------------------------------ factorials and "!"


@pytest.mark.parametrize(
    "text",
    [
        "So 5! = 120.",
        "We need 7! / (4! * 3!) ways.",
        "There are n! ways and (n-1)! cycles.",
        "The count is \\binom{7}{3}! here.",
        "Note that 3!! = 3.",
    ],
)
def test_factorials_do_not_end_sentences(text):
    assert pieces(text) == [text]


def test_exclamation_ends_a_sentence_only_before_a_new_one():
    assert stripped("That's it! Now 4! = 24! Wow! that is big. Ok!\nNext") == [
        "That's it!",
        "Now 4! = 24!",
        "Wow! that is big.",
        "Ok!",
        "Next",
    ]
    assert stripped('Yes! "Great," he said. Done! **Final**') == [
        "Yes!",
        '"Great," he said.',
        "Done!",
        "**Final**",
    ]


# ------------------------------------------------------------------ currency and "$"


@pytest.mark.parametrize(
    "text",
    [
        "It costs $5, and $1,200 total.",
        "It costs $3 and $4.",
        "Pay $5 per item; the rest is $10.",
        "So $5-$3 = $2 is left.",
        "He has $600. which totals $7200 a year.",
        "So 2*$4 = $8, and $3.50 + $ 1 more.",
    ],
)
def test_currency_dollars_do_not_open_math(text):
    # A sentence end inside a currency "pair" must still split: append one and check.
    probe = text + " Then stop."
    assert stripped(probe) == [*stripped(text), "Then stop."]
    # And the dollar signs pair with nothing: "$x$" after them is still math.
    assert stripped(text + " Let $x. Y$ be.") == [*stripped(text), "Let $x. Y$ be."]


def test_currency_text_with_its_own_sentence_ends():
    assert stripped("Sylvie earns $600. which totals $600/month * 12 = $7200 a year.\nNext.") == [
        "Sylvie earns $600.",
        "which totals $600/month * 12 = $7200 a year.",
        "Next.",
    ]


def test_math_after_currency_still_pairs():
    text = "Hmm, so $5 per item, and $x. Y$ items cost $5x. Z$. Done."
    assert stripped(text) == ["Hmm, so $5 per item, and $x. Y$ items cost $5x. Z$.", "Done."]


def test_escaped_dollar_is_a_price():
    assert stripped("It is \\$5. Then \\$6 and $a. b$ ok.") == [
        "It is \\$5.",
        "Then \\$6 and $a. b$ ok.",
    ]


def test_dollar_math_with_inner_spaces_pairs_when_not_a_price():
    assert stripped("We get $ x = \\boxed{8.3}$. Also $\\triangle ACD $ is. Done.") == [
        "We get $ x = \\boxed{8.3}$.",
        "Also $\\triangle ACD $ is.",
        "Done.",
    ]


# ------------------------------------------------------------------ unclosed and long math


def test_unclosed_inline_math_does_not_swallow_the_rest():
    text = "Let \\(x = 2. Then y = 3.\n\nNew paragraph. Another one."
    assert stripped(text) == ["Let \\(x = 2.", "Then y = 3.", "New paragraph.", "Another one."]


def test_unclosed_opener_followed_by_a_closed_one():
    # The first \( has no closer before the next \(, so it is plain text.
    text = "So \\(x = 2. Then \\(y. Z\\) holds. End."
    assert stripped(text) == ["So \\(x = 2.", "Then \\(y. Z\\) holds.", "End."]


def test_unclosed_display_and_dollar_stop_at_the_paragraph():
    text = "So \\[ x = 4. Good.\n\nNext $y. Yes. Now.\n\nLast one. End $z$."
    assert stripped(text) == [
        "So \\[ x = 4.",
        "Good.",
        "Next $y.",
        "Yes.",
        "Now.",
        "Last one.",
        "End $z$.",
    ]


def test_math_never_crosses_a_blank_line():
    assert stripped("Let $x. Good\n\nFine. Then w$ end.") == [
        "Let $x.",
        "Good",
        "Fine.",
        "Then w$ end.",
    ]
    assert stripped("$$a. Bb\n\nCc. Dd$$") == ["$$a.", "Bb", "Cc.", "Dd$$"]


def test_math_spans_have_a_length_cap():
    body = "x + " * (INLINE_MATH_CAP // 4)
    text = f"So \\({body}\\). Then it ends. Next."
    assert stripped(text) == [f"So \\({body}\\).", "Then it ends.", "Next."]
    body = "a. B " * (INLINE_MATH_CAP // 5 + 1)  # longer than the cap: not math
    assert len(stripped(f"So \\({body}\\).")) > 100
    long_display = "x. Y " * (DISPLAY_MATH_CAP // 5 - 5)
    assert stripped(f"A \\[{long_display}\\] B.") == [f"A \\[{long_display}\\] B."]
    too_long = long_display * 2
    assert len(stripped(f"A \\[{too_long}\\] B.")) > 100


def test_double_backslash_bracket_is_a_line_break_not_a_display():
    text = "\\begin{align*} a &= 1 \\\\[2pt] b &= 2. \\end{align*} Then x. Done."
    assert stripped(text) == [
        "\\begin{align*} a &= 1 \\\\[2pt] b &= 2. \\end{align*}",
        "Then x.",
        "Done.",
    ]


def test_environments_are_atomic_but_prose_environments_are_not():
    text = "We get\n\\begin{align*}\nx &= 2. \\\\\ny &= 3.\n\\end{align*}\nSo done."
    assert stripped(text) == [
        "We get\n\\begin{align*}\nx &= 2. \\\\\ny &= 3.\n\\end{align*}",
        "So done.",
    ]
    text = "\\begin{itemize}\n\\item One. Two.\n\\end{itemize}"
    assert stripped(text) == ["\\begin{itemize}", "\\item One.", "Two.", "\\end{itemize}"]


# ------------------------------------------------------------------ ellipses


def test_ellipsis_ends_a_sentence_only_before_a_new_one():
    text = "So 4/3 = 1.333... is it. Hmm... Let me see. so... then 1, 2, ... 9. Ok… Fine"
    assert stripped(text) == [
        "So 4/3 = 1.333... is it.",
        "Hmm...",
        "Let me see.",
        "so... then 1, 2, ... 9.",
        "Ok…",
        "Fine",
    ]


def test_ellipsis_in_math_and_before_punctuation():
    assert stripped("We get 33.333...%, so $1, 2, ...$ works. Done.") == [
        "We get 33.333...%, so $1, 2, ...$ works.",
        "Done.",
    ]


# ------------------------------------------------------------------ math ends and continues


def test_period_at_the_end_of_math_ends_the_sentence():
    text = "So $r = 3.$  Also\n\\[x = 5.\\]Then $\\dots$ more $a, b, ...$ and. End"
    assert stripped(text) == [
        "So $r = 3.$",
        "Also\n\\[x = 5.\\]",
        "Then $\\dots$ more $a, b, ...$ and.",
        "End",
    ]


def test_display_before_a_capitalized_word_ends_the_sentence():
    assert stripped("We have \\[ x = 1 \\]Because x. So \\[y\\] Therefore z. \\[w\\]A b.") == [
        "We have \\[ x = 1 \\]",
        "Because x.",
        "So \\[y\\]",
        "Therefore z.",
        "\\[w\\]A b.",
    ]


def test_display_continued_in_lower_case_stays_one_sentence():
    assert stripped("We get\n\\[ x = 2 \\]\nwhere x is real.\n\\[ y = 3. \\]\nwhich is odd.") == [
        "We get\n\\[ x = 2 \\]\nwhere x is real.",
        "\\[ y = 3. \\]",
        "which is odd.",
    ]


def test_command_brace_groups_are_atomic():
    assert stripped(
        "The answer is \\boxed{3.5}. Next \\text{e.g. A. B} and \\frac{1.}{2. X} ok."
    ) == [
        "The answer is \\boxed{3.5}.",
        "Next \\text{e.g. A. B} and \\frac{1.}{2. X} ok.",
    ]
    # A group that never closes is plain text.
    assert stripped("So \\boxed{3. Then it ends.") == ["So \\boxed{3.", "Then it ends."]


def test_non_string_is_refused():
    with pytest.raises(TypeError, match="needs a str"):
        split_sentences(b"bytes.")  # type: ignore[arg-type]


# ------------------------------------------------------------------ running time


def _seconds(text: str, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        split_sentences(text)
        best = min(best, time.perf_counter() - start)
    return best


def _check_linear(unit: str, size: int = 200_000) -> None:
    # `size` characters finish fast, and 4x the text takes about 4x the time (quadratic: 16x).
    big = unit * (size // len(unit))
    small = unit * (size // 4 // len(unit))
    t_big = _seconds(big)
    assert t_big < 5.0  # generous: the machine may be shared
    assert t_big < 10 * max(_seconds(small), 1e-3)
    assert_partition(big, split_sentences(big))


ADVERSARIAL = {
    "dollars": "$",
    "dollar-digits": "$5 ",
    "open-parens": "\\(",
    "open-brackets": "\\[ ",
    "bangs": "!",
    "spaced-bangs": "5! A",
    "dots": ".",
    "ellipses": "... a ",
    "braces": "\\boxed{",
    "begins": "\\begin{x}",
    "words": "aaaa",
    "steps": "1. ",
}


def test_linear_time_on_adversarial_text():
    # 200k characters of unclosed math openers, stray dollars, factorials and ellipses.
    _check_linear("$\\(!{ \\[$$. 1.3... e.g. $5 \\boxed{\n")


@pytest.mark.slow
@pytest.mark.parametrize("unit", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_linear_time_on_each_adversarial_pattern(unit):
    _check_linear(unit)


def test_linear_time_on_long_realistic_text():
    sentence = (
        "So 5! = 120 and the cost is $5 per item, so $x = 3.5$ and \\(y = 2\\). Hmm... "
        "Wait, 1.333... is not it!\n\\[ z = 1. \\]\n"
    )
    _check_linear(sentence, size=120_000)
    assert len(split_sentences(sentence * 100)) == len(split_sentences(sentence)) * 100
