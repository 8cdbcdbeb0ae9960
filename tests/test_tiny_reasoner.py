"""The shipped tiny reasoner: loads offline, reasons, and meets the numbers of its model card."""

import json
import re

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.organism import generate, measure, render_model_card

DIRECTORY = BUILTIN_MODELS["tiny-reasoner"]
CARD = json.loads((DIRECTORY / "evaluation.json").read_text())


@pytest.fixture(scope="module")
def reasoner():
    return rc.load_model("tiny-reasoner")


@pytest.fixture(scope="module")
def plain():
    """The shipped directory through plain transformers, nothing from this library."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(DIRECTORY), AutoModelForCausalLM.from_pretrained(DIRECTORY)


def plain_accuracy(tokenizer, model, problems, *, add_special_tokens=True):
    """Greedy answers the way a transformers user would get them (batched, left padding)."""
    tokenizer.padding_side = "left"
    prompts = [rc.organism.format_prompt(p) for p in problems]
    inputs = tokenizer(
        prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=160, do_sample=False)
    texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    answers = [t.split("</think>", 1)[1].strip() if "</think>" in t else "" for t in texts]
    return sum(a == p.gold for a, p in zip(answers, problems)) / len(problems)


def mismatches(got, want, where="results", *, rel=1e-4, abs_=1e-6) -> list[str]:
    """Every place where two JSON-like records differ (floats to a tolerance)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if got.keys() != want.keys():
            return [f"{where}: keys {sorted(got)} != {sorted(want)}"]
        return [m for k in want for m in mismatches(got[k], want[k], f"{where}[{k!r}]")]
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items != {len(want)}"]
        return [
            m for i, (g, w) in enumerate(zip(got, want)) for m in mismatches(g, w, f"{where}[{i}]")
        ]
    if isinstance(want, float) or isinstance(got, float):
        return (
            [] if got == pytest.approx(want, rel=rel, abs=abs_) else [f"{where}: {got} != {want}"]
        )
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def test_mismatches_finds_every_difference_and_tolerates_float_noise():
    import copy

    assert mismatches(CARD, copy.deepcopy(CARD)) == []
    other = json.loads(json.dumps(CARD))
    other["ablation_single_heads"]["L0H5"]["value"] += 0.002
    other["top_heads_emit"]["mass"][0] *= 1 + 1e-7  # float noise: tolerated
    other["random3"]["heads"][1][0] = "L9H9"
    found = mismatches(other, CARD)
    assert len(found) == 2
    assert "['ablation_single_heads']['L0H5']['value']" in found[0]
    assert f"['random3']['heads'][1][0]: 'L9H9' != {CARD['random3']['heads'][1][0]!r}" in found[1]


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


def test_plain_tokenizer_adds_bos_like_training(plain):
    tokenizer, _ = plain
    text = rc.organism.format_prompt(rc.organism.make_problems(1, seed=0, split="heldout")[0])
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0
    assert ids[1:] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1


def test_plain_transformers_generation_reaches_the_cards_accuracy(plain):
    """AutoTokenizer + AutoModelForCausalLM.generate, as a newcomer would, on held-out problems."""
    tokenizer, model = plain
    problems = rc.organism.make_problems(20, seed=31, split="heldout")
    assert plain_accuracy(tokenizer, model, problems) >= 0.95
    # the same calls without the BOS the model was trained with fail: the BOS is what matters
    assert plain_accuracy(tokenizer, model, problems[:8], add_special_tokens=False) <= 0.5


@pytest.mark.slow
def test_plain_transformers_matches_the_card_on_its_500_problems(plain):
    tokenizer, model = plain
    problems = rc.organism.make_problems(
        CARD["n_problems"], seed=CARD["heldout_seed"], split="heldout"
    )
    assert plain_accuracy(tokenizer, model, problems) == pytest.approx(
        CARD["with_reasoning"]["exact"]["estimate"]
    )


def test_the_cards_plain_transformers_snippet_runs(capsys):
    card = (DIRECTORY / "MODEL_CARD.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S)[1]
    exec(snippet.replace("DIR", repr(str(DIRECTORY))), {})
    # b=8, c=8*3=24→4, m=4+4=8
    assert capsys.readouterr().out.strip().endswith("</think> The answer is 8.")


@pytest.mark.parametrize("name", ["tiny-reasoner", "tiny-reasoner-v1"])
def test_the_card_is_rendered_from_the_shipped_records(name):
    directory = BUILTIN_MODELS[name]
    training = json.loads((directory / "training.json").read_text())
    results = json.loads((directory / "evaluation.json").read_text())
    card = render_model_card(training, results, name=name)
    assert card == (directory / "MODEL_CARD.md").read_text()
    assert f'rc.load_model("{name}")' in card


@pytest.mark.parametrize("name", ["tiny-reasoner", "tiny-reasoner-v1"])
def test_the_cards_training_command_reproduces_the_training_record(name):
    """The card's command, parsed by the training CLI, gives every option of the record."""
    import shlex

    from reasoning_circuits.organism.train import parse_args

    directory = BUILTIN_MODELS[name]
    training = json.loads((directory / "training.json").read_text())
    card = (directory / "MODEL_CARD.md").read_text()
    command = re.search(r"Command: `python -m reasoning_circuits.organism.train ([^`]*)`", card)
    args = parse_args(shlex.split(command[1]))
    assert (args.steps, args.seed, args.lr, args.batch_size, args.threads) == (
        training["steps"], training["seed"], training["lr"], training["batch_size"],
        training["threads"],
    )  # fmt: skip
    assert args.filler_rate == training.get("filler_rate", 0.1)
    assert args.error_rate == training.get("error_rate", 0.0)
    assert args.skip_rate == training.get("skip_rate", 0.0)
    assert args.first_filler == training.get("first_filler", False)
    assert args.init == training.get("init_from")
    assert [h["step"] for h in training["history"]] == list(
        range(args.eval_every, args.steps + 1, args.eval_every)
    )
    assert training.get("init_from") in (None, *BUILTIN_MODELS)  # the source is shipped too


def test_bridge_and_library_put_exactly_one_bos(reasoner):
    """The bridge prepends BOS, the tokenizer adds it: nothing may add it twice."""
    bos = reasoner.tokenizer.bos_token_id
    problem = rc.organism.make_problems(1, seed=11, split="heldout")[0]
    text = rc.organism.format_prompt(problem)
    tokens = reasoner.to_tokens(text)[0].tolist()
    assert tokens[0] == bos and tokens.count(bos) == 1
    generated = generate(reasoner, [problem])[0]
    assert generated.ids[: len(tokens)] == tuple(tokens)
    assert rc.Trace.from_text(text + generated.completion, reasoner.tokenizer).tokens[
        0
    ].tolist() == list(generated.ids[:-1])  # the same ids, without the final EOS


def test_reasons_and_answers_held_out_problems(reasoner):
    problems = rc.organism.make_problems(30, seed=11, split="heldout")
    results = generate(reasoner, problems)
    assert sum(g.correct for g in results) >= 25
    trace = rc.Trace.from_ids(results[0].ids, reasoner.tokenizer)
    assert trace.text_of("answer").strip() == results[0].completion.split("</think>")[1].strip()
    assert len(trace.sentences) >= 2


def test_the_evaluation_record_has_every_field_and_its_numbers_agree():
    """The record's derived numbers, recomputed here from its own raw counts and draws."""
    from scipy.stats import binomtest

    chance = CARD["chance_rate"]
    assert chance == 0.1
    rates = [
        *CARD["with_reasoning"].values(),
        *(CARD["finished_filler"][k] for k in ("value", "template", "exact")),
        *CARD["unablated"].values(),
    ]
    for name in ("ablation_top3_emit", "ablation_top3_answer"):
        rates += [CARD[name]["value"], CARD[name]["template"]]
    for group in ("ablation_single_of_top3", "ablation_leave_one_out_of_top3"):
        assert set(CARD[group]) == set(CARD["top_heads_emit"]["heads"])
        rates += [r for a in CARD[group].values() for r in (a["value"], a["template"])]
    for r in rates:  # each a Wilson interval of its own count
        ci = rc.stats.proportion_ci(r["k"], r["n"])
        assert (r["estimate"], r["low"], r["high"], r["method"]) == pytest.approx(
            (r["k"] / r["n"], ci.low, ci.high, "wilson")
        )
    filler = CARD["finished_filler"]
    p = binomtest(filler["value"]["k"], filler["value"]["n"], chance).pvalue
    assert filler["binomtest_p_vs_chance"] == pytest.approx(p)
    assert filler["distinguishable_from_chance"] == (p < 0.05)
    # the split: ranked on the first half, measured on the second
    n = CARD["n_problems"]
    assert CARD["split"] == {"rank_on": [0, n // 2], "measure_on": [n // 2, n]}
    assert CARD["unablated"]["value"]["n"] == n - n // 2
    assert "segment_offset" in CARD["ablation_means"]
    # the random baseline: >= 100 distinct triples outside the top set, summarised faithfully
    rnd = CARD["random3"]
    top = set(CARD["top_heads_emit"]["heads"])
    assert rnd["draws"] >= 100 and rnd["of"] == 3654 and len(rnd["value_drop"]) == rnd["draws"]
    assert len({tuple(h) for h in rnd["heads"]}) == rnd["draws"]
    assert all(len(set(h)) == 3 and not set(h) & top for h in rnd["heads"])
    drops = np.array(rnd["value_drop"])
    summary = rnd["value_drop_summary"]
    assert summary["mean"] == pytest.approx(drops.mean())
    assert [summary[q] for q in ("p5", "p50", "p95")] == pytest.approx(
        np.percentile(drops, [5, 50, 95])
    )
    top_drop = CARD["ablation_top3_emit"]["value_drop"]["drop"]
    assert rnd["share_value_drop_at_least_top3"] == pytest.approx(np.mean(drops >= top_drop))
    # a drop is unablated minus ablated, per the counts
    base = CARD["unablated"]["value"]["k"]
    for a in [CARD["ablation_top3_emit"], *CARD["ablation_single_of_top3"].values()]:
        assert a["value_drop"]["drop"] == pytest.approx((base - a["value"]["k"]) / a["value"]["n"])
        assert a["value_drop"]["low"] <= a["value_drop"]["drop"] <= a["value_drop"]["high"]


def test_value_and_template_are_judged_apart_under_teacher_forcing(reasoner):
    """A forced wrong N breaks the value, not the template; a forced wrong "!" the reverse."""
    solved = [g for g in generate(reasoner, rc.organism.make_problems(4, seed=13, split="heldout"))
              if g.value_correct and g.template_correct]  # fmt: skip
    assert solved  # the model answers ~99% of held-out problems right (its card)
    g = solved[0]
    problem = g.problem
    tok = reasoner.tokenizer
    close = list(g.ids).index(tok.convert_tokens_to_ids("</think>"))
    n = rc.organism.gold_value(problem.gold)
    wrong_n = str((int(n) + 1) % 10)

    def forced(answer):
        ids = [*g.ids[: close + 1], *tok.encode(answer, add_special_tokens=False)]
        return rc.Trace.from_ids([*ids, tok.eos_token_id], tok)

    traces = [
        forced(" " + problem.gold),
        forced(f" The answer is {wrong_n}."),
        forced(f" The answer is {n}!"),  # the row before N sees the gold prefix
    ]
    value, template = rc.organism.answer_outcomes(reasoner, traces)
    assert value.tolist() == [True, False, True]
    assert template.tolist() == [True, True, False]


@pytest.mark.slow
def test_model_card_numbers_hold():
    """Every number of the card, recomputed by the command's function with the card's settings."""
    rnd = CARD["random3"]
    results = measure(
        DIRECTORY,
        n=CARD["n_problems"],
        seed=CARD["heldout_seed"],
        draws=rnd["draws"],
        draw_seed=rnd["seed"],
    )
    differing = mismatches(results, CARD)  # every number of the card, to float tolerance
    assert not differing, "\n".join(differing)


def test_ablating_its_reasoning_heads_costs_more_log_prob_than_random_heads(reasoner):
    """R2A §4 on the shipped model: mean-ablate the top-3 heads by reasoning mass at the
    answer-emitting row, and 3 random other heads, at the answer; compare with CIs."""
    import random

    problems = rc.organism.make_problems(30, seed=12, split="heldout")
    traces = [rc.Trace.from_ids(g.ids, reasoner.tokenizer) for g in generate(reasoner, problems)]
    heads = [rc.Head(layer, head) for layer in range(4) for head in range(8)]
    means = rc.mean_head_outputs(reasoner, traces, heads, positions="answer", by="segment_offset")
    profiles = rc.AttentionProfile.compute(
        reasoner, traces, queries={"emit": rc.rows.predicting()}, batch_size=30
    )
    top = list(rc.rank_heads(profiles, query="emit", key="reasoning", k=3))
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


def test_second_organism_card_matches_its_records():
    """tiny-reasoner-b's card states what its training and evaluation records hold."""
    directory = BUILTIN_MODELS["tiny-reasoner-b"]
    card = (directory / "MODEL_CARD.md").read_text()
    training = json.loads((directory / "training.json").read_text())
    evaluation = json.loads((directory / "evaluation.json").read_text())
    assert f"{training['parameters']:,}-parameter" in card
    for point in training["history"]:
        assert f"{point['heldout_accuracy']:.3f} at step {point['step']}" in card
    for key, row in evaluation.items():
        interval = rc.stats.proportion_ci(row["k"], row["n"])
        assert (interval.low, interval.high) == pytest.approx((row["low"], row["high"]))
        text = f"{row['k']} / {row['n']} = {100 * row['k'] / row['n']:.1f}% "
        text += f"[{100 * row['low']:.1f}%, {100 * row['high']:.1f}%]"
        if key == "a_reasoning":
            text = "200 / 200 = 100% [98.1%, 100%]"
        assert text in card, key
    assert "| tiny-reasoner-v1 (same problems) |" in card  # the a_* numbers are v1's
    assert f"{evaluation['b_reasoning']['wrong_claims']} wrong arithmetic claims" in card
