"""The model card of the tiny reasoner: ``MODEL_CARD.md`` rendered from measured numbers.

:func:`render_model_card` turns the training record (``training.json``) and the numbers of
:func:`reasoning_circuits.organism.analysis.measure` (``evaluation.json``) into the card's
Markdown; :func:`write_model_card` writes both files into the model directory. The card holds
no number that is not in those two records, so rendering the shipped records reproduces the
shipped card exactly (a test checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["render_model_card", "write_model_card"]


def _rate(r: dict[str, Any]) -> str:
    return f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _drop(d: dict[str, Any]) -> str:
    return f"{d['drop']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (p {d['mcnemar_p']:.2g})"


def _ablation_row(label: str, a: dict[str, Any]) -> str:
    return (
        f"| {label} | {_rate(a['value'])} | {_rate(a['template'])} | {_drop(a['value_drop'])} "
        f"| {_drop(a['template_drop'])} |"
    )


def _chance_sentence(filler: dict[str, Any], chance: float) -> str:
    value, p = filler["value"], filler["binomtest_p_vs_chance"]
    if not filler["distinguishable_from_chance"]:
        verdict = "indistinguishable from chance at the 5% level"
    elif value["estimate"] > chance:
        verdict = "above chance at the 5% level"
    else:
        verdict = "below chance at the 5% level"
    return (
        f"Without reasoning the answer's value is right in {value['k']} of {value['n']} "
        f"problems, {_rate(value)}, against a chance rate of {chance:.0%} (10 possible "
        f"values): exact two-sided binomial test p = {p:.2g}, {verdict}."
    )


def render_model_card(
    training: dict[str, Any], results: dict[str, Any], *, name: str = "tiny-reasoner"
) -> str:
    """The text of ``MODEL_CARD.md`` from the training record and the measured numbers.

    ``training`` is what :func:`reasoning_circuits.organism.train.train` returns (and writes
    to ``training.json``); ``results`` what
    :func:`reasoning_circuits.organism.analysis.measure` returns.
    """
    r = results
    arch = training["architecture"]
    history = "\n".join(
        f"| {h['step']} | {h['loss']:.4f} | {h['heldout_accuracy']:.3f} |"
        for h in training["history"]
    )
    command = (
        f"python -m reasoning_circuits.organism.train --out DIR --steps {training['steps']} "
        f"--seed {training['seed']}"
    )
    # records of models trained before these options existed hold none of them
    filler_rate = training.get("filler_rate", 0.1)
    error_rate = training.get("error_rate", 0.0)
    first_filler = training.get("first_filler", False)
    if filler_rate != 0.1:
        command += f" --filler-rate {filler_rate}"
    if error_rate:
        command += f" --error-rate {error_rate}"
    if first_filler:
        command += " --first-filler"
    skip_rate = training.get("skip_rate", 0.0)
    if skip_rate:
        command += f" --skip-rate {skip_rate}"
    # the table's rows; records older than the eval_every key: the step between two rows
    history_steps = [h["step"] for h in training["history"]]
    inferred = history_steps[1] - history_steps[0] if len(history_steps) > 1 else 500
    eval_every = training.get("eval_every", inferred)
    if eval_every != 500:
        command += f" --eval-every {eval_every}"
    if training.get("threads", 2) != 2:  # the run is deterministic for a given thread count
        command += f" --threads {training['threads']}"
    if training["lr"] != 0.002:
        command += f" --lr {training['lr']}"
    if training["batch_size"] != 64:
        command += f" --batch-size {training['batch_size']}"
    init_from = training.get("init_from")
    if init_from:
        command += f" --init {init_from}"
    start = f"Fine-tuned from `{init_from}`: " if init_from else ""
    batch = training["batch_size"]
    threads = f"{training['threads']} thread" + ("s" if training["threads"] != 1 else "")
    filler_where = "any step" if first_filler else "a step after the first"
    errors = (
        f"; a step states a wrong result with probability {error_rate} (another digit), and the "
        "later steps and the answer follow what it states, so the answer has to read the "
        f"reasoning (the right result is {1 - error_rate:.0%} of the training targets for a "
        "step, so greedy decoding writes it: see the accuracy below)"
        if error_rate
        else ""
    )
    written = "steps written out in full" if skip_rate else "every step written out"
    skips = (
        f"; a step before the last is left unwritten with probability {skip_rate} (the next "
        "step restates its value); training reads the step after such a gap but does not "
        "learn to write it (`Problem.read_only`), so the model reads reasoning with a missing "
        "step yet writes every step itself"
        if skip_rate
        else ""
    )
    wr, ff = r["with_reasoning"], r["finished_filler"]
    rank_a, measure_b = r["split"]["rank_on"], r["split"]["measure_on"]
    emit, answer = r["top_heads_emit"], r["top_heads_answer"]
    emit_heads = ", ".join(f"{h} ({m:.3f})" for h, m in zip(emit["heads"], emit["mass"]))
    answer_heads = ", ".join(f"{h} ({m:.3f})" for h, m in zip(answer["heads"], answer["mass"]))
    base = r["unablated"]
    rows = [
        f"| none | {_rate(base['value'])} | {_rate(base['template'])} | | |",
        _ablation_row("top 3 by emitting row: " + " ".join(emit["heads"]), r["ablation_top3_emit"]),
    ]
    rows += [_ablation_row(f"{h} alone", a) for h, a in r["ablation_single_of_top3"].items()]
    rows += [
        _ablation_row("top 3 without " + h, a)
        for h, a in r["ablation_leave_one_out_of_top3"].items()
    ]
    rows.append(
        _ablation_row(
            "top 3 by all answer rows: " + " ".join(answer["heads"]), r["ablation_top3_answer"]
        )
    )
    table = "\n".join(rows)
    needed = [h for h, a in r["ablation_single_of_top3"].items() if a["value_drop"]["low"] > 0]
    needed_text = ", ".join(needed) if needed else "none"
    singles = r["ablation_single_heads"]
    costly = (
        ", ".join(
            f"{h} (value {s['value']:.3f}, template {s['template']:.3f})"
            for h, s in singles.items()
            if s["value"] < base["value"]["estimate"]
            or s["template"] < base["template"]["estimate"]
        )
        or "none"
    )
    rnd = r["random3"]
    vs, ts = rnd["value_drop_summary"], rnd["template_drop_summary"]
    split = ", ".join(f"{k} {v:.3f}" for k, v in r["answer_split"].items())
    share = rnd["share_value_drop_at_least_top3"]
    reasoning_row = (
        f"| with reasoning | {_rate(wr['value'])} | {_rate(wr['template'])} "
        f"| {_rate(wr['exact'])} | {_rate(wr['finished'])} |"
    )
    filler_row = (
        f'| "finished" filler instead of reasoning | {_rate(ff["value"])} '
        f"| {_rate(ff['template'])} | {_rate(ff['exact'])} | |"
    )
    origin = f"fine-tuned from `{init_from}`" if init_from else "trained from scratch"
    card = f"""# {name}

A {training["parameters"]:,}-parameter GPT-2 {origin}, on 2 CPU cores, on the
synthetic multi-hop task of `reasoning_circuits.organism.task`. It writes
`question <think>` reasoning `</think> The answer is N.` and needs its reasoning to get N.
Load it with `rc.load_model("{name}")`.

## Use with plain transformers
The tokenizer adds the BOS token (`<|endoftext|>`) itself, as in training:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(DIR)
model = AutoModelForCausalLM.from_pretrained(DIR)
inputs = tokenizer("g=6. b=8. c=b*3. m=c+4. What is m? <think>\\n", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=160, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```

## Training
- Command: `{command}`
- Code commit: `{training["commit"]}`
- {start}Seed {training["seed"]}, {training["steps"]} steps of {batch} fresh problems,
  AdamW (lr {training["lr"]}, cosine, weight decay 0.01), {threads},
  {training["minutes"]} minutes. {training["finished_share"]:.0%} of examples use the
  "finished" prompt (no reasoning).
- Architecture: {arch["n_layer"]} layers, {arch["n_head"]} heads, d_model {arch["n_embd"]},
  d_mlp {arch["n_inner"]}, context {arch["n_positions"]}; character-level tokenizer with
  `<think>`, `</think>` as tokens.
- Data: problems with 2–4 hops of `+k`, `-k`, `*k` mod 10, 1–2 distractor facts,
  {written} (`c=b*3=8*3=4.`), a filler sentence before {filler_where} with
  probability {filler_rate}{errors}{skips}.

| step | loss | held-out accuracy (200 problems) |
|---|---|---|
{history}

## Measured
Command: `python -m reasoning_circuits.organism.evaluate --model DIR --write-card` (defaults:
`--n {r["n_problems"]} --draws {rnd["draws"]} --draw-seed {rnd["seed"]}`), which writes
`evaluation.json` and renders this card from it. {r["n_problems"]} held-out problems (seed
{r["heldout_seed"]}), greedy decoding with plain `transformers` and the shipped tokenizer.
An answer is judged twice: its **value** (the number `rc.grading.grade` reads equals the
gold N) and its **template** (the text around the number is exactly `The answer is ` and
`.`). Every rate is shown as estimate [95% Wilson interval].

| prompt | value right | template right | both | reasoning closed |
|---|---|---|---|---|
{reasoning_row}
{filler_row}

{_chance_sentence(ff, r["chance_rate"])}

### Heads
Ranked on problems {rank_a[0] + 1}–{rank_a[1]} (half A; `rc.AttentionProfile` of the model's own
correct traces), measured on problems {measure_b[0] + 1}–{measure_b[1]} (half B), so no head
is chosen on the problems that test it. Mass = mean share of the query rows' attention on the
reasoning.

- top 3 by the rows that predict the answer's number (`rc.rows.predicting()`): {emit_heads}
- top 3 by all answer rows (R2A's answer→reasoning): {answer_heads}

Ablation: a head's output at the answer positions is replaced by its mean over half A's
answers **at the same answer offset** (`rc.mean_head_outputs(..., by="segment_offset")`,
so that a head's replacement at each position of the fixed text is what it writes there; the
template column checks that the ablation leaves that text intact). Outcomes are
teacher-forced on half B's own reasoning (`answer_outcomes`: the argmax at the rows
predicting N for the value, at every other answer row and EOS for the template; the rows
after N see the gold N). Unablated, teacher forcing gives value {_rate(base["value"])};
generation gave {_rate(base["generated_value"])} on the same problems. Drops are
unablated − ablated with Newcombe's paired interval and the exact McNemar p.

| heads mean-ablated | value right | template right | value drop | template drop |
|---|---|---|---|---|
{table}

Heads of the top 3 whose ablation alone drops the value (interval above 0): {needed_text}.

Random baseline: {rnd["draws"]} distinct random sets of 3 among the heads outside the top 3
by the emitting rows ({rnd["of"]} possible sets; `random.Random({rnd["seed"]})`). Value drop:
mean {vs["mean"]:.3f}, 5th/50th/95th percentiles {vs["p5"]:.3f} / {vs["p50"]:.3f} /
{vs["p95"]:.3f}, max {vs["max"]:.3f}; template drop: mean {ts["mean"]:.3f}, 5th/50th/95th
percentiles {ts["p5"]:.3f} / {ts["p50"]:.3f} / {ts["p95"]:.3f}, max {ts["max"]:.3f}. Share
of random sets whose value drop is at least the top 3's: {share:.3f}.

Single heads (all {len(singles)}, on half B) whose ablation lowers the value or the template
rate: {costly}.

Attention mass is a lead, not a proof; the ablations above are the check. The answer's
attention on half A (mean over its correct traces, layers and heads): {split}.
"""
    return card


def write_model_card(
    model_dir: str | Path, results: dict[str, Any], *, name: str = "tiny-reasoner"
) -> Path:
    """Write ``evaluation.json`` (``results``) and ``MODEL_CARD.md`` into ``model_dir``.

    ``name`` is the model's name in the card (its title and the ``rc.load_model`` line).
    ``model_dir`` must hold the ``training.json`` that training wrote. Returns the card's path.
    """
    directory = Path(model_dir)
    record = directory / "training.json"
    if not record.is_file():
        raise FileNotFoundError(
            f"{record} is missing; the card needs the training record that "
            "`python -m reasoning_circuits.organism.train --out DIR` writes"
        )
    training = json.loads(record.read_text())
    card = render_model_card(training, results, name=name)
    (directory / "evaluation.json").write_text(json.dumps(results, indent=2))
    path = directory / "MODEL_CARD.md"
    path.write_text(card)
    return path
