"""The shipped tiny reasoner: loads offline, reasons, and meets the numbers of its model card."""

import json

import pytest

import reasoning_circuits as rc
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.organism.evaluate import evaluate, generate

DIRECTORY = BUILTIN_MODELS["tiny-reasoner"]


@pytest.fixture(scope="module")
def reasoner():
    return rc.load_model("tiny-reasoner")


def test_shipped_directory_is_complete_and_small():
    files = {p.name for p in DIRECTORY.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"} <= files
    size = sum(p.stat().st_size for p in DIRECTORY.iterdir())
    assert size <= 5 * 2**20


def test_loads_offline_in_eval_mode_with_think_tokens(reasoner):
    assert not reasoner.training and reasoner.cfg.n_layers == 4
    tok = reasoner.tokenizer
    assert len(tok.encode("<think>", add_special_tokens=False)) == 1
    assert len(tok.encode("</think>", add_special_tokens=False)) == 1


def test_unknown_name_lists_builtin_models():
    with pytest.raises(rc.ModelLoadError, match="tiny-reasoner"):
        rc.load_model("tiny-reasonr")


def test_reasons_and_answers_held_out_problems(reasoner):
    problems = rc.organism.make_problems(30, seed=11, split="heldout")
    results = generate(reasoner, problems)
    assert sum(g.correct for g in results) >= 25
    trace = rc.Trace.from_ids(results[0].ids, reasoner.tokenizer)
    assert trace.text_of("answer").strip() == results[0].completion.split("</think>")[1].strip()
    assert len(trace.sentences) >= 2


@pytest.mark.slow
def test_model_card_numbers_hold():
    """Issue 3's bar, recomputed on 500 held-out problems (as recorded in the model card)."""
    results = evaluate(DIRECTORY, n=500)
    recorded = json.loads((DIRECTORY / "evaluation.json").read_text())
    assert results["accuracy_with_reasoning"] == pytest.approx(recorded["accuracy_with_reasoning"])
    assert results["accuracy_with_reasoning"] >= 0.95
    assert results["accuracy_teacher_forced_check"] == pytest.approx(
        results["accuracy_with_reasoning"]
    )
    assert results["accuracy_with_reasoning"] - results["accuracy_finished_filler"] >= 0.30
    assert max(results["top_answer_to_reasoning_mass"]) >= 0.5
    # ablation bar: the 3 heads with the highest reasoning mass at the answer-emitting row
    assert results["drop_top3_emitting"] >= 0.30
    assert results["drop_random3_mean"] <= 0.10


def test_ablating_its_reasoning_heads_costs_more_log_prob_than_random_heads(reasoner):
    """R2A §4 on the shipped model: mean-ablate the top-3 heads by reasoning mass at the
    answer-emitting row, and 3 random other heads, at the answer; compare with CIs."""
    import random

    from reasoning_circuits.organism.evaluate import emitting_mass

    problems = rc.organism.make_problems(30, seed=12, split="heldout")
    traces = [rc.Trace.from_ids(g.ids, reasoner.tokenizer) for g in generate(reasoner, problems)]
    heads = [rc.Head(layer, head) for layer in range(4) for head in range(8)]
    means = rc.mean_head_outputs(reasoner, traces, heads, positions="answer")
    top = list(rc.rank_heads(emitting_mass(reasoner, traces)[None], k=3))
    rfh = rc.HeadIntervention(top, "mean", positions="answer", means=means).effect(reasoner, traces)
    rng = random.Random(0)
    others = [h for h in heads if h not in top]
    for _ in range(3):
        chosen = rng.sample(others, 3)
        random_effect = rc.HeadIntervention(chosen, "mean", positions="answer", means=means).effect(
            reasoner, traces
        )
        assert rfh.ci[1] < random_effect.ci[0], (str(rfh), str(random_effect))
    assert rfh.mean_diff < -1.0  # nats of answer log-probability
