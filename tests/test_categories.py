"""Heuristic sentence categories, the classifier hook, and failure modes on traces."""

import json
from pathlib import Path

import pytest

from reasoning_circuits import Trace
from reasoning_circuits.categories import (
    CATEGORIES,
    SentenceContext,
    SentenceLabel,
    classify_sentence_heuristic,
    classify_sentences,
    diagnose,
)
from reasoning_circuits.verification import verify_arithmetic

FIXTURE = Path(__file__).parent / "fixtures" / "categories_sentences.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4. "
    "She sells the remainder for $2 per egg. How much does she make every day?"
)


@pytest.mark.parametrize("row", ROWS, ids=[r["text"][:30] for r in ROWS])
def test_hand_labelled_sentences(row):
    ctx = SentenceContext(
        row["index"], 12, question=QUESTION, claims=tuple(verify_arithmetic(row["text"]))
    )
    label = classify_sentence_heuristic(row["text"], ctx)
    assert (label.category, label.rule) == (row["category"], row["rule"])
    assert label.heuristic


def test_fixture_covers_every_category():
    assert {r["category"] for r in ROWS} == set(CATEGORIES)


# A reasoning with planted arithmetic errors (sentences 2, 4 and 6) and its corrected twin.
PROMPT = f"{QUESTION} <think>"
PLANTED = (
    "\nOkay, let me work out Janet's daily income. "
    "First, I need the number of eggs left after breakfast and baking. "
    "She uses 3 + 4 = 8 eggs herself. "
    "Wait, let me redo that more carefully. "
    "So 16 - 3 - 4 = 10 eggs are left. "
    "Each egg sells for $2. "
    "She makes 9 × $2 = $16 a day. "
    "The answer is 18.\n"
)
CORRECT = (
    PLANTED.replace("3 + 4 = 8", "3 + 4 = 7")
    .replace("16 - 3 - 4 = 10", "16 - 3 - 4 = 9")
    .replace("$2 = $16", "$2 = $18")
)
ANSWER = " Janet makes $18 every day."


@pytest.fixture
def traces(tokenizer):
    planted = Trace.from_parts(PROMPT, PLANTED, ANSWER, tokenizer)
    correct = Trace.from_parts(PROMPT, CORRECT, ANSWER, tokenizer)
    return planted, correct


def test_planted_errors_are_found_and_the_failure_mode_follows(traces):
    planted, correct = traces
    assert len(planted.sentences) == 8
    result = diagnose(planted)
    modes = [s.failure_mode for s in result]
    assert [i for i, m in enumerate(modes) if m == "computational_mistake"] == [2, 4, 6]
    for i, expected in ((2, "3 + 4 should be 7"), (4, "16 - 3 - 4 should be 9")):
        assert result[i].correction == expected and not result[i].failure_heuristic
    assert result[6].correction == "9 × $2 should be 18"
    assert [(c.stated, c.correct_value) for c in result.wrong_claims] == [
        ("8", 7),
        ("10", 9),
        ("16", 18),
    ]
    # spans index the sentence text
    sentence = planted.text_of(planted.sentences[2])
    [claim] = result[2].claims
    assert sentence[claim.span[0] : claim.span[1]] == "3 + 4 = 8"

    clean = diagnose(correct)
    assert not any(s.failure_mode == "computational_mistake" for s in clean)
    assert clean.wrong_claims == [] and sum(len(s.claims) for s in clean) == 3
    assert [s.category for s in clean][2] == "active_computation"
    assert clean[7].category == "final_answer_emission"
    frame = clean.to_frame()
    assert len(frame) == 8 and frame["n_wrong"].sum() == 0
    assert (frame["char_start"] >= correct["reasoning"].char_start).all()


def test_heuristic_failure_modes_follow_their_rules():
    sentences = [
        "We need the total.",
        "Maybe it is 5, or perhaps it might be 6.",
        "That's wrong, I mixed up the numbers.",
        "So the total is 42.",
        "Then 3 × 4 = 12 is computed.",
    ]
    result = diagnose(sentences, question="What is 6 times 7?")
    assert [s.failure_mode for s in result] == [
        None,
        "excessive_uncertainty",
        "logical_error",
        "missing_step",  # 42 appears nowhere before and is not computed here
        None,
    ]
    assert all(s.failure_heuristic for s in result)
    supported = diagnose(["6 × 7 = 42.", "So the total is 42."], question="What is 6 times 7?")
    assert supported[1].failure_mode is None


def test_only_negative_restricts_heuristic_labels_not_verified_ones():
    sentences = ["Maybe it is 5, or perhaps 6.", "So 2 + 2 = 5."]
    result = diagnose(sentences, deltas=[0.3, 0.4], only_negative=True)
    assert result[0].failure_mode is None
    assert result[1].failure_mode == "computational_mistake"
    negative = diagnose(sentences, deltas=[-0.3, 0.4], only_negative=True)
    assert negative[0].failure_mode == "excessive_uncertainty"
    with pytest.raises(ValueError, match="needs deltas"):
        diagnose(sentences, only_negative=True)
    with pytest.raises(ValueError, match="2 sentences"):
        diagnose(sentences, deltas=[0.1])


def test_user_classifier_hook(traces):
    planted, _ = traces
    seen = []

    def by_length(sentence, ctx):
        seen.append((ctx.index, ctx.n_sentences, len(ctx.claims)))
        return "active_computation" if ctx.claims else "plan_generation"

    labels = classify_sentences(planted, classifier=by_length)
    assert [lab.heuristic for lab in labels] == [False] * 8
    assert {lab.rule for lab in labels} == {"classifier"}
    assert [lab.category for lab in labels].count("active_computation") == 3
    assert seen[0] == (0, 8, 0)

    custom = SentenceLabel("self_checking", "my-llm")
    assert classify_sentences(["a b c."], classifier=lambda s, c: custom) == [custom]
    with pytest.raises(ValueError, match="must return one of"):
        classify_sentences(["a b c."], classifier=lambda s, c: "arithmetic")


def test_plain_string_input_uses_the_sentence_splitter():
    text = "First, add the costs. The sum is 12.50 + 3 = 15.50. The answer is 15.50."
    labels = classify_sentences(text)
    assert [lab.category for lab in labels] == [
        "problem_setup",
        "active_computation",
        "final_answer_emission",
    ]
    with pytest.raises(TypeError, match="expected a Trace"):
        classify_sentences(42)


def test_tiny_reasoner_steps_need_the_modulus():
    steps = ["c=b*3=8*3=4.", "Let me check.", "m=c+4=4+4=8."]
    plain = diagnose(steps)
    assert plain[0].failure_mode == "computational_mistake"
    mod = diagnose(steps, modulus=10)
    assert [s.failure_mode for s in mod] == [None, None, None]
    assert [s.category for s in mod] == [
        "active_computation",
        "self_checking",
        "active_computation",
    ]
