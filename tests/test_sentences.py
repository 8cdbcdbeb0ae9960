import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from reasoning_circuits import split_sentences


def pieces(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


@given(st.text(alphabet=st.sampled_from(list("ab 1.2!?\n$\\[]()e.g:")), max_size=80))
@settings(max_examples=300, deadline=None)
def test_spans_cover_text_exactly(text):
    spans = split_sentences(text)
    if not text.strip():
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a < b for a, b in spans)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(spans))


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
