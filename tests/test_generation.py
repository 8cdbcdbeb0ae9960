"""Answers generated under interventions: KV-cached generation against full recomputation."""

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.generation import (
    _grown,
    answers_correct,
    generate_answers,
    same_final_number,
)


def recomputed(model, trace, intervention, n):
    """Greedy answer recomputing the whole sequence at every step (no cache)."""
    start = trace["answer"].start
    ids = list(trace.ids[:start])
    for _ in range(n):
        grown = _grown(trace, start + n)
        hooks = intervention.hooks(model, grown, width=start + n) if intervention else []
        with torch.no_grad():
            logits = model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)
        token = int(logits[0, -1].argmax())
        if token == model.tokenizer.eos_token_id:
            break
        ids.append(token)
    return model.tokenizer.decode(ids[start:])


@pytest.mark.parametrize(
    "intervention",
    [
        None,
        rc.HeadIntervention([(1, 0), (2, 3)], "zero", positions="answer"),
        rc.HeadIntervention([(0, 2)], "scale", scale=3.0),
        rc.HeadIntervention([(1, 1), (2, 2)], "knockout", query="answer", key="reasoning"),
    ],
    ids=["none", "zero-answer", "scale-all", "knockout"],
)
def test_cached_generation_equals_recomputing_every_step(lively, intervention):
    tok = lively.tokenizer
    traces = [
        rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tok),
        rc.Trace.from_parts("Q: 12 + 5?", "\nadd them: 17.\n", "", tok),
    ]
    ours = generate_answers(lively, traces, intervention, max_new_tokens=6)
    assert ours == [recomputed(lively, t, intervention, 6) for t in traces]


def test_the_intervention_changes_what_is_generated(lively):
    trace = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", lively.tokenizer)
    plain = generate_answers(lively, [trace], max_new_tokens=8)
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    ablated = generate_answers(
        lively, [trace], rc.HeadIntervention(heads, "zero"), max_new_tokens=8
    )
    assert plain != ablated


def test_stop_text_ends_generation(lively):
    trace = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", "", lively.tokenizer)
    full = generate_answers(lively, [trace], max_new_tokens=10)[0]
    assert len(full) > 1
    cut = generate_answers(lively, [trace], max_new_tokens=10, stop=full[0])[0]
    assert cut == full[: len(cut)] and full[0] in cut and len(cut) < len(full)


@pytest.mark.parametrize(
    ("generated", "gold", "expected"),
    [
        ("The answer is 42.", "42", True),
        ("so 1,000 apples", "1000", True),
        ("3 then 4", "the answer is 4", True),
        ("3 then 4", "3", False),
        ("no number", "7", False),
        (" yes ", "yes", True),
        ("-2.5", "-2.50", True),
    ],
)
def test_same_final_number(generated, gold, expected):
    assert same_final_number(generated, gold) is expected


def test_gold_count_must_match(lively):
    trace = rc.Trace.from_parts("Q", "\nr.\n", " 1", lively.tokenizer)
    with pytest.raises(ValueError, match="1 traces"):
        answers_correct(lively, [trace], gold=["1", "2"])


def test_ablating_the_tiny_reasoners_copy_head_costs_generated_accuracy():
    from reasoning_circuits.organism.evaluate import generate

    model = rc.load_model("tiny-reasoner")
    problems = rc.organism.make_problems(12, seed=11, split="heldout")
    traces = [
        rc.Trace.from_ids(g.ids, model.tokenizer, metadata={"gold": str(g.problem.value)})
        for g in generate(model, problems)
        if g.finished
    ]
    before = answers_correct(model, traces)
    assert before.mean() == 1.0
    # L0H5 copies the answer digit from the reasoning at the emitting row (MODEL_CARD.md)
    effect = rc.HeadIntervention([(0, 5)], "zero", positions="answer").effect(
        model, traces, answers_correct
    )
    assert effect.mean_diff < -0.3 and effect.ci[1] < 0
    np.testing.assert_array_equal(effect.before, before)
