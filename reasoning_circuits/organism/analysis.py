"""What the tiny reasoner does, measured: generation, accuracy and its reasoning heads.

The functions the examples, the tests and the model card share:

* :func:`generate`: greedy completions of organism problems (KV cache, left padding), with
  the answer graded against the gold sentence: :class:`Generated`.
* :func:`accuracy`: the share of problems answered exactly right.
* :func:`emitting_mass`: per head, how much of the row that emits the answer's value attends
  to the reasoning (the ranking that finds the heads the answer needs).
* :func:`answer_accuracy`: teacher-forced check of the answer, optionally with a
  :class:`~reasoning_circuits.interventions.HeadIntervention` active (the ablation study).
* :func:`measure`: every number of the model card (``MODEL_CARD.md``), from a directory.

Every tokenization here places BOS explicitly and passes ``add_special_tokens=False``, so
the results do not depend on whether a tokenizer adds BOS by itself (the shipped one does,
for plain ``transformers`` use).

Caveats: :func:`answer_accuracy` teacher-forces the model's own reasoning and then the gold
answer; greedy decoding writes the gold answer exactly when the argmax at every answer
position is the next gold token, so this equals generation accuracy for the traces it is
given (:func:`measure` checks it against generation for the unablated model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from reasoning_circuits.attention import AttentionProfile
from reasoning_circuits.heads import Head, rank_heads
from reasoning_circuits.interventions import HeadIntervention, mean_head_outputs
from reasoning_circuits.metrics import batch_logits
from reasoning_circuits.organism.task import Problem, PromptMode, format_prompt, make_problems
from reasoning_circuits.trace import Trace, pad_traces

__all__ = [
    "HELDOUT_SEED",
    "Generated",
    "accuracy",
    "answer_accuracy",
    "emitting_mass",
    "forced_traces",
    "generate",
    "measure",
]

HELDOUT_SEED = 20261121
"""Seed of the held-out problems the model card is measured on."""


@dataclass(frozen=True)
class Generated:
    """A greedy completion of one problem.

    ``ids`` are the prompt's ids (starting with BOS) followed by the generated ones (up to and
    including EOS when the model wrote it); ``completion`` is the generated text without EOS.
    ``correct``: the answer (the text after ``</think>``, or all of it for a prompt without
    reasoning) equals ``problem.gold``; ``finished``: the model closed its reasoning (always
    true for prompts that already contain ``</think>``).
    """

    problem: Problem
    ids: tuple[int, ...]
    completion: str
    correct: bool
    finished: bool


def _prompt_ids(tokenizer: Any, problem: Problem, mode: PromptMode) -> list[int]:
    body = tokenizer.encode(format_prompt(problem, mode), add_special_tokens=False)
    return [int(tokenizer.bos_token_id), *body]


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

    Args:
        model: a ``TransformerBridge`` (its wrapped HF model generates) or an HF causal LM.
        problems: organism problems; the prompt is :func:`format_prompt` of each, in ``mode``.
        mode: ``"reasoning"``, ``"finished"`` or ``"empty"`` (see :func:`format_prompt`).
        tokenizer: defaults to ``model.tokenizer`` (needed for a plain HF model).
        batch_size: problems per ``generate`` call.
        max_new_tokens: generation stops there or at EOS.

    Returns one :class:`Generated` per problem, in order.
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    hf_model = getattr(model, "original_model", model)  # a bridge wraps the HF model
    hf_model.eval()
    results: list[Generated] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [_prompt_ids(tokenizer, p, mode) for p in chunk]
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


def accuracy(
    model: Any,
    problems: list[Problem],
    *,
    mode: PromptMode = "reasoning",
    tokenizer: Any = None,
) -> float:
    """Share of ``problems`` (0 to 1) whose greedy answer equals the gold sentence."""
    if not problems:
        raise ValueError("accuracy of no problems is undefined; pass at least one problem")
    results = generate(model, problems, mode=mode, tokenizer=tokenizer)
    return sum(g.correct for g in results) / len(problems)


def forced_traces(tokenizer: Any, generated: list[Generated]) -> list[Trace]:
    """The model's own prompt, reasoning and ``</think>``, then the gold answer and EOS.

    ``generated`` must have closed their reasoning (``g.finished``).
    """
    traces = []
    close = tokenizer.convert_tokens_to_ids("</think>")
    for g in generated:
        if close not in g.ids:
            raise ValueError(
                f"the completion of {g.problem.question!r} has no </think>; keep only "
                "finished completions ([g for g in generated if g.finished])"
            )
        prefix = list(g.ids[: g.ids.index(close) + 1])
        answer = tokenizer.encode(" " + g.problem.gold, add_special_tokens=False)
        ids = prefix + answer + [tokenizer.eos_token_id]
        traces.append(Trace.from_ids(ids, tokenizer, metadata={"gold": g.problem.gold}))
    return traces


@torch.no_grad()
def emitting_mass(
    model: Any, traces: list[Trace], *, batch_size: int = 100
) -> Float[np.ndarray, "layer head"]:
    """Mean over traces of the reasoning mass of the *answer-emitting* row, per head.

    That row is the one whose next token is the answer's value (the space in
    ``The answer is N.``, i.e. three positions before the answer's end, so the traces must
    end with ``The answer is N.`` and EOS). The whole-answer mean of R2A dilutes it with the
    rows that write the fixed text ``The answer is``. Masses are fractions of the row's
    attention (0 to 1).
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

        def hook(pattern: Tensor, *, hook: Any, rows: Tensor, keys: Tensor) -> None:
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
    """Share of traces (0 to 1) whose answer and EOS greedy decoding would reproduce exactly.

    One teacher-forced pass per batch, with ``intervention`` active when given.
    """
    correct = 0
    for start in range(0, len(traces), batch_size):
        batch = traces[start : start + batch_size]
        rows = [range(t["answer"].start - 1, len(t) - 1) for t in batch]
        predicted = batch_logits(model, batch, intervention, rows=rows).argmax(-1)
        for i, (trace, span) in enumerate(zip(batch, rows)):
            targets = trace.tokens[0, span.start + 1 :]
            correct += bool((predicted[i, : len(span)] == targets).all())
    return correct / len(traces)


def measure(
    model_dir: str | Path, *, n: int = 500, seed: int = HELDOUT_SEED, draws: int = 10
) -> dict[str, Any]:
    """Every number of the model card, on ``n`` held-out problems, greedy decoding.

    1. Accuracy with reasoning (``"reasoning"`` prompt) and with the ``"finished"`` filler,
       through plain ``transformers`` (``AutoModelForCausalLM`` and the directory's tokenizer).
    2. Answer→reasoning attention mass per head (:class:`AttentionProfile` on the model's own
       correct traces) and the heads that carry most of it.
    3. Accuracy when 3 heads are mean-ablated at the answer positions (the top 3 by R2A's
       whole-answer mass, the top 3 by :func:`emitting_mass`, ``draws`` random triples, and
       every single head), by :func:`answer_accuracy` on the model's own reasoning. Problems
       whose reasoning did not finish count as wrong.
    """
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
    traces = forced_traces(tokenizer, usable)
    own_traces = [Trace.from_ids(g.ids, tokenizer) for g in usable if g.correct]
    profiles = AttentionProfile.compute(model, own_traces, batch_size=50)
    a2r = profiles.mean("answer", "reasoning")
    top = rank_heads(profiles, k=3)
    all_heads = [Head(layer, head) for layer in range(a2r.shape[0]) for head in range(a2r.shape[1])]
    means = mean_head_outputs(
        model, traces, all_heads, positions="answer", by="pooled", batch_size=50
    )

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
