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

import numpy as np

__all__ = ["render_model_card", "write_model_card"]


def render_model_card(training: dict[str, Any], results: dict[str, Any]) -> str:
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
    tops = ", ".join(
        f"{h} ({m:.3f})"
        for h, m in zip(r["top_heads_by_answer_to_reasoning"], r["top_answer_to_reasoning_mass"])
    )
    randoms = r["accuracy_random3_mean_ablated"]
    random_row = (
        f"{np.mean(randoms):.3f} (drop {r['drop_random3_mean']:.3f}; "
        f"range {min(randoms):.3f}–{max(randoms):.3f})"
    )
    top_row = f"{r['accuracy_top3_mean_ablated']:.3f} (drop {r['drop_top3']:.3f})"
    emit_heads = ", ".join(
        f"{h} ({m:.3f})"
        for h, m in zip(r["top_heads_at_emitting_position"], r["top_emitting_mass"])
    )
    emit_row = (
        f"{r['accuracy_top3_emitting_mean_ablated']:.3f} (drop {r['drop_top3_emitting']:.3f})"
    )
    lead = (
        f"{r['top_heads_at_emitting_position'][0]}: {r['top_emitting_mass'][0]:.2f} of the "
        "emitting row's attention on the reasoning"
    )
    critical = (
        ", ".join(
            f"{h} → {a:.3f}" for h, a in r["accuracy_single_head_mean_ablated"].items() if a < 0.99
        )
        or "none"
    )
    split = ", ".join(f"{k} {v:.3f}" for k, v in r["answer_split"].items())
    card = f"""# tiny-reasoner

A {training["parameters"]:,}-parameter GPT-2 trained from scratch, on 2 CPU cores, on the
synthetic multi-hop task of `reasoning_circuits.organism.task`. It writes
`question <think>` reasoning `</think> The answer is N.` and needs its reasoning to get N.
Load it with `rc.load_model("tiny-reasoner")`.

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
- Seed {training["seed"]}, {training["steps"]} steps of {training["batch_size"]} fresh problems,
  AdamW (lr {training["lr"]}, cosine, weight decay 0.01), {training["threads"]} threads,
  {training["minutes"]} minutes. {training["finished_share"]:.0%} of examples use the
  "finished" prompt (no reasoning).
- Architecture: {arch["n_layer"]} layers, {arch["n_head"]} heads, d_model {arch["n_embd"]},
  d_mlp {arch["n_inner"]}, context {arch["n_positions"]}; character-level tokenizer with
  `<think>`, `</think>` as tokens.
- Data: problems with 2–4 hops of `+k`, `-k`, `*k` mod 10, 1–2 distractor facts and rules,
  every step written out (`c=b*3=8*3=4.`), a filler sentence before a step with probability
  0.1.

| step | loss | held-out accuracy (200 problems) |
|---|---|---|
{history}

## Measured
Command: `python -m reasoning_circuits.organism.evaluate --model DIR --write-card`.
On {r["n_problems"]} held-out problems (seed {r["heldout_seed"]}), greedy decoding with
plain `transformers` and the shipped tokenizer:

| | value |
|---|---|
| accuracy with reasoning | {r["accuracy_with_reasoning"]:.3f} |
| accuracy with the "finished" filler instead of reasoning | {r["accuracy_finished_filler"]:.3f} |
| reasoning finished (`</think>` written) | {r["reasoning_finished"]:.3f} |
| top heads by answer→reasoning mass (mean over all answer rows, R2A) | {tops} |
| accuracy, those 3 mean-ablated at the answer positions | {top_row} |
| top heads by reasoning mass of the answer-emitting row (predicts N) | {emit_heads} |
| accuracy, those 3 mean-ablated at the answer positions | {emit_row} |
| accuracy, 3 random other heads mean-ablated ({len(randoms)} draws) | {random_row} |
| single heads whose ablation costs accuracy | {critical} |

Means for the ablation are each head's mean output over the answer positions of the same
held-out traces. Only one of the 17 answer rows (`The answer is N.`) has to read the
reasoning: averaged over all of them, the head that reads it most there
({lead})
can rank below heads that the answer does not need. Ranking by the emitting row finds the
causal heads. Attention mass is a lead, not a proof; check it with an intervention.

The answer's attention (mean over correct traces, layers and heads): {split}.
"""
    return card


def write_model_card(model_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``evaluation.json`` (``results``) and ``MODEL_CARD.md`` into ``model_dir``.

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
    card = render_model_card(training, results)
    (directory / "evaluation.json").write_text(json.dumps(results, indent=2))
    path = directory / "MODEL_CARD.md"
    path.write_text(card)
    return path
