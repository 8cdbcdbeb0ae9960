"""Measure what the tiny reasoner does, and write its model card.

    python -m reasoning_circuits.organism.evaluate --model DIR [--n 500] [--write-card]

On ``n`` held-out problems, greedy decoding:

1. accuracy with reasoning (``"reasoning"`` prompt) and with the ``"finished"`` filler;
2. answer→reasoning attention mass per head (:class:`AttentionProfile` on the model's own
   traces) and the heads that carry most of it;
3. accuracy when the 3 heads with the highest answer→reasoning mass are mean-ablated at the
   answer positions, against 3 random other heads (10 draws).

For 3, the model's own reasoning is kept (the ablation touches only the answer positions,
which come after it) and the answer is checked in one teacher-forced pass: greedy decoding
writes the gold answer exactly when the argmax at every answer position is the next gold
token, so this equals generation accuracy (checked against it for the unablated model).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reasoning_circuits.attention import AttentionProfile
from reasoning_circuits.heads import Head, rank_heads
from reasoning_circuits.interventions import HeadIntervention, mean_head_outputs
from reasoning_circuits.metrics import batch_logits
from reasoning_circuits.organism.task import Problem, PromptMode, format_prompt, make_problems
from reasoning_circuits.trace import Trace, pad_traces

__all__ = ["Generated", "answer_accuracy", "evaluate", "generate", "write_model_card"]


@dataclass(frozen=True)
class Generated:
    """A greedy completion: the prompt + completion ids and whether the answer is right."""

    problem: Problem
    ids: tuple[int, ...]
    completion: str
    correct: bool
    finished: bool  # the completion contains </think>


@torch.no_grad()
def generate(
    model: Any,
    problems: list[Problem],
    *,
    mode: PromptMode = "reasoning",
    tokenizer: Any = None,
    batch_size: int = 100,
    max_new_tokens: int = 160,
) -> list[Generated]:
    """Greedy completions (KV cache, left padding) of a ``TransformerBridge`` or an HF model.

    ``tokenizer`` defaults to ``model.tokenizer``.
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    hf_model = getattr(model, "original_model", model)  # a bridge wraps the HF model
    hf_model.eval()
    results: list[Generated] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [
            [
                tokenizer.bos_token_id,
                *tokenizer.encode(format_prompt(p, mode), add_special_tokens=False),
            ]
            for p in chunk
        ]
        width = max(map(len, prompts))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, row in enumerate(prompts):
            ids[i, width - len(row) :] = torch.tensor(row)
            attention[i, width - len(row) :] = 1
        out = hf_model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        for problem, prompt, row in zip(chunk, prompts, out[:, width:].tolist()):
            new = row[: row.index(eos) + 1] if eos in row else row
            text = tokenizer.decode([t for t in new if t != eos])
            answer = text.split("</think>", 1)[1] if "</think>" in text else text
            if mode != "reasoning":
                answer = text
            results.append(
                Generated(
                    problem,
                    tuple(prompt + new),
                    text,
                    answer.strip() == problem.gold,
                    "</think>" in text or mode != "reasoning",
                )
            )
    return results


def _forced_traces(tokenizer: Any, generated: list[Generated]) -> list[Trace]:
    """The model's own prompt + reasoning + ``</think>``, then the gold answer and EOS."""
    traces = []
    close = tokenizer.convert_tokens_to_ids("</think>")
    for g in generated:
        prefix = list(g.ids[: g.ids.index(close) + 1])
        answer = tokenizer.encode(" " + g.problem.gold, add_special_tokens=False)
        ids = prefix + answer + [tokenizer.eos_token_id]
        traces.append(Trace.from_ids(ids, tokenizer, metadata={"gold": g.problem.gold}))
    return traces


@torch.no_grad()
def emitting_mass(model: Any, traces: list[Trace], *, batch_size: int = 100) -> np.ndarray:
    """``[layer, head]``: mean over traces of the reasoning mass of the *answer-emitting* row.

    That row is the one whose next token is the answer's value (the space in
    ``The answer is N.``); the whole-answer mean of R2A dilutes it with the rows that write
    the fixed text ``The answer is``.
    """
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    total = np.zeros((n_layers, n_heads))
    for start in range(0, len(traces), batch_size):
        batch = traces[start : start + batch_size]
        tokens, mask = pad_traces(batch)
        rows = torch.tensor([t["answer"].stop - 3 for t in batch])  # predicts N in "is N."
        keys = torch.zeros(tokens.shape)
        for i, trace in enumerate(batch):
            keys[i, trace["reasoning"].slice] = 1.0

        def hook(pattern: torch.Tensor, *, hook: Any, rows: Tensor, keys: Tensor) -> None:
            layer = int(hook.name.split(".")[1])
            row = pattern[torch.arange(len(rows)), :, rows]  # [batch, head, key]
            total[layer] += (row.float() * keys[:, None]).sum(-1).sum(0).numpy()

        model.run_with_hooks(
            tokens,
            attention_mask=mask,
            return_type=None,
            fwd_hooks=[
                (f"blocks.{layer}.attn.hook_pattern", partial(hook, rows=rows, keys=keys))
                for layer in range(n_layers)
            ],
        )
    return total / len(traces)


@torch.no_grad()
def answer_accuracy(
    model: Any,
    traces: list[Trace],
    *,
    intervention: HeadIntervention | None = None,
    batch_size: int = 100,
) -> float:
    """Share of traces whose answer (and EOS) greedy decoding would reproduce exactly."""
    correct = 0
    for start in range(0, len(traces), batch_size):
        batch = traces[start : start + batch_size]
        rows = [range(t["answer"].start - 1, len(t) - 1) for t in batch]
        predicted = batch_logits(model, batch, intervention, rows=rows).argmax(-1)
        for i, (trace, span) in enumerate(zip(batch, rows)):
            targets = trace.tokens[0, span.start + 1 :]
            correct += bool((predicted[i, : len(span)] == targets).all())
    return correct / len(traces)


def evaluate(
    model_dir: str | Path, *, n: int = 500, seed: int = 20261121, draws: int = 10
) -> dict[str, Any]:
    """All the numbers of the model card (see the module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasoning_circuits.models import load_model

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir)
    problems = make_problems(n, seed=seed, split="heldout")
    with_reasoning = generate(hf_model, problems, mode="reasoning", tokenizer=tokenizer)
    finished = generate(hf_model, problems, mode="finished", tokenizer=tokenizer)
    acc_reasoning = float(np.mean([g.correct for g in with_reasoning]))
    acc_finished = float(np.mean([g.correct for g in finished]))

    model = load_model(model_dir)
    usable = [g for g in with_reasoning if g.finished]
    if not any(g.correct for g in usable):
        raise ValueError(
            f"the model answered none of {n} held-out problems correctly with reasoning; "
            "there is nothing to measure (train it longer)"
        )
    traces = _forced_traces(tokenizer, usable)
    own_traces = [Trace.from_ids(g.ids, tokenizer) for g in usable if g.correct]
    profiles = AttentionProfile.compute(model, own_traces, batch_size=50)
    a2r = profiles.mean("answer", "reasoning")
    top = rank_heads(profiles, k=3)
    all_heads = [Head(layer, head) for layer in range(a2r.shape[0]) for head in range(a2r.shape[1])]
    means = mean_head_outputs(model, traces, all_heads, positions="answer", batch_size=50)

    def acc_without(heads: list[Head]) -> float:
        iv = HeadIntervention(heads, "mean", positions="answer", means=means)
        # the traces keep only problems whose reasoning finished; unfinished ones count wrong
        return answer_accuracy(model, traces, intervention=iv) * len(traces) / n

    forced_base = answer_accuracy(model, traces) * len(traces) / n
    acc_top = acc_without(list(top))
    emit = emitting_mass(model, traces)
    top_emit = rank_heads(emit[None], k=3)
    acc_top_emit = acc_without(list(top_emit))
    rng = random.Random(seed)
    others = [h for h in all_heads if h not in set(top_emit)]
    random_draws = [rng.sample(others, 3) for _ in range(draws)]
    acc_random = [acc_without(heads) for heads in random_draws]
    single = {str(h): acc_without([h]) for h in all_heads}
    return {
        "n_problems": n,
        "heldout_seed": seed,
        "accuracy_with_reasoning": acc_reasoning,
        "accuracy_finished_filler": acc_finished,
        "accuracy_teacher_forced_check": forced_base,
        "reasoning_finished": len(usable) / n,
        "top_heads_by_answer_to_reasoning": [str(h) for h in top],
        "top_answer_to_reasoning_mass": [float(a2r[h.layer, h.head]) for h in top],
        "answer_split": {
            part: float(profiles.mean("answer", part).mean()) for part in profiles.parts
        },
        "accuracy_top3_mean_ablated": acc_top,
        "top_heads_at_emitting_position": [str(h) for h in top_emit],
        "top_emitting_mass": [float(emit[h.layer, h.head]) for h in top_emit],
        "accuracy_top3_emitting_mean_ablated": acc_top_emit,
        "accuracy_random3_mean_ablated": acc_random,
        "accuracy_single_head_mean_ablated": single,
        "random3_heads": [[str(h) for h in heads] for heads in random_draws],
        "drop_top3": acc_reasoning - acc_top,
        "drop_top3_emitting": acc_reasoning - acc_top_emit,
        "drop_random3_mean": acc_reasoning - float(np.mean(acc_random)),
    }


def write_model_card(model_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``MODEL_CARD.md`` (training record + measured numbers) and ``evaluation.json``."""
    directory = Path(model_dir)
    training = json.loads((directory / "training.json").read_text())
    (directory / "evaluation.json").write_text(json.dumps(results, indent=2))
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
On {r["n_problems"]} held-out problems (seed {r["heldout_seed"]}), greedy:

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
reasoning: averaged over all of them, the head that reads it most there ({lead}) can rank
below heads that the answer does not need. Ranking by the emitting row finds the causal heads.
Attention mass is a lead, not a
proof; check it with an intervention.

The answer's attention (mean over correct traces, layers and heads): {split}.
"""
    path = directory / "MODEL_CARD.md"
    path.write_text(card)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the tiny reasoner.")
    parser.add_argument("--model", required=True, help="model directory (or 'tiny-reasoner')")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--write-card", action="store_true", help="write MODEL_CARD.md there")
    args = parser.parse_args()
    from reasoning_circuits.models import BUILTIN_MODELS

    directory = BUILTIN_MODELS.get(args.model, Path(args.model))
    results = evaluate(directory, n=args.n)
    print(json.dumps(results, indent=2))
    if args.write_card:
        print(f"wrote {write_model_card(directory, results)}")


if __name__ == "__main__":
    main()
