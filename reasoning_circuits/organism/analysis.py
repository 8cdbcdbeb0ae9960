"""What the tiny reasoner does, measured: generation, accuracy and its reasoning heads.

The functions the examples, the tests and the model card share:

* :func:`generate`: greedy completions of organism problems (KV cache, left padding), with
  the answer graded against the gold sentence: :class:`Generated`.
* :func:`accuracy`: the share of problems answered exactly right.
* :func:`judge_answer`: an answer's value and its template, judged apart (the answer is
  ``The answer is N.``: the value is N, the template the text around it).
* :func:`emitting_mass`: per head, how much of the row that emits the answer's value attends
  to the reasoning. Kept for old code: ``rc.AttentionProfile.compute(..., queries={"emit":
  rc.rows.predicting()})`` with ``rc.rank_heads(..., query="emit", key="reasoning")`` does
  the same through the library, and :func:`measure` uses that.
* :func:`answer_outcomes` / :func:`answer_accuracy`: teacher-forced value and template per
  trace (or the share with both right), optionally with a
  :class:`~reasoning_circuits.interventions.HeadIntervention` active (the ablation study).
* :func:`measure`: every number of the model card (``MODEL_CARD.md``), from a directory:
  heads ranked on one half of the held-out problems, ablated on the other.

Every tokenization here places BOS explicitly and passes ``add_special_tokens=False``, so
the results do not depend on whether a tokenizer adds BOS by itself (the shipped one does,
for plain ``transformers`` use).

Caveats: :func:`answer_accuracy` teacher-forces the model's own reasoning and then the gold
answer; greedy decoding writes the gold answer exactly when the argmax at every answer
position is the next gold token, so this equals generation accuracy for the traces it is
given (:func:`measure` checks it against generation for the unablated model).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.stats import binomtest
from torch import Tensor

from reasoning_circuits.attention import AttentionProfile
from reasoning_circuits.grading import grade
from reasoning_circuits.heads import Head, rank_heads
from reasoning_circuits.interventions import HeadIntervention, mean_head_outputs
from reasoning_circuits.metrics import batch_logits
from reasoning_circuits.organism.task import Problem, PromptMode, format_prompt, make_problems
from reasoning_circuits.rows import predicting
from reasoning_circuits.stats import paired_binary, proportion_ci
from reasoning_circuits.trace import Trace, pad_traces

__all__ = [
    "CHANCE_RATE",
    "HELDOUT_SEED",
    "Generated",
    "accuracy",
    "answer_accuracy",
    "answer_outcomes",
    "emitting_mass",
    "forced_traces",
    "generate",
    "gold_value",
    "judge_answer",
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
    true for prompts that already contain ``</think>``). The two halves of ``correct``,
    judged apart (:func:`judge_answer`): ``value_correct``, the number the answer states is
    the gold value; ``template_correct``, the text around it is exactly ``The answer is ``
    and ``.``.
    """

    problem: Problem
    ids: tuple[int, ...]
    completion: str
    correct: bool
    finished: bool
    value_correct: bool = False
    template_correct: bool = False


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
            done = "</think>" in text or mode != "reasoning"
            value, template = judge_answer(answer, problem.gold) if done else (False, False)
            results.append(
                Generated(
                    problem,
                    tuple(prompt + new),
                    text,
                    answer.strip() == problem.gold,
                    done,
                    value,
                    template,
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


CHANCE_RATE = 0.1
"""Chance accuracy of the answer's value: N is one of 10 residues mod 10."""

_TEMPLATE = re.compile(r"The answer is ([^\s.]+)\.")
_GOLD = re.compile(r"The answer is (\d+)\.")


def gold_value(gold: str) -> str:
    """The number ``N`` of a gold answer sentence ``The answer is N.``."""
    match = _GOLD.fullmatch(gold.strip())
    if match is None:
        raise ValueError(f"{gold!r} is not an organism gold answer ('The answer is N.')")
    return match[1]


def judge_answer(answer: str, gold: str) -> tuple[bool, bool]:
    """``(value, template)`` of one answer text (the text after ``</think>``).

    ``value``: :func:`reasoning_circuits.grading.grade` (``kind="gsm8k"``, no reasoning
    required) reads the same number as the gold's ``N``; ``template``: the stripped answer
    is exactly ``The answer is `` + one token without spaces or dots + ``.``, whatever that
    token is. An answer can have the right value in a broken template, and the reverse.
    """
    verdict = grade(answer, gold_value(gold), kind="gsm8k", think="optional")
    return bool(verdict.correct), _TEMPLATE.fullmatch(answer.strip()) is not None


@torch.no_grad()
def answer_outcomes(
    model: Any,
    traces: list[Trace],
    *,
    intervention: HeadIntervention | None = None,
    batch_size: int = 100,
) -> tuple[Bool[np.ndarray, " trace"], Bool[np.ndarray, " trace"]]:
    """Teacher-forced ``(value, template)`` per trace, with ``intervention`` active if given.

    ``value``: the argmax at every row predicting the answer's number
    (:func:`reasoning_circuits.rows.predicting`) is the gold token; ``template``: the argmax
    at every other answer row, up to and including the row predicting EOS, is the gold
    token. Both together are what greedy decoding needs to write the gold answer. The rows
    after ``N`` are conditioned on the gold ``N``, so a template failure there is not caused
    by a wrong digit.
    """
    select = predicting()
    values, templates = [], []
    for start in range(0, len(traces), batch_size):
        batch = traces[start : start + batch_size]
        rows = [range(t["answer"].start - 1, len(t) - 1) for t in batch]
        predicted = batch_logits(model, batch, intervention, rows=rows).argmax(-1)
        for i, (trace, span) in enumerate(zip(batch, rows)):
            hits = (predicted[i, : len(span)] == trace.tokens[0, span.start + 1 :]).numpy()
            value_rows = np.isin(np.arange(span.start, span.stop), select(trace))
            if not value_rows.any():
                raise ValueError(f"no row of {trace.text_of('answer')!r} predicts a number")
            values.append(bool(hits[value_rows].all()))
            templates.append(bool(hits[~value_rows].all()))
    return np.array(values, dtype=bool), np.array(templates, dtype=bool)


@torch.no_grad()
def answer_accuracy(
    model: Any,
    traces: list[Trace],
    *,
    intervention: HeadIntervention | None = None,
    batch_size: int = 100,
) -> float:
    """Share of traces (0 to 1) whose answer and EOS greedy decoding would reproduce exactly.

    Value and template both right (see :func:`answer_outcomes`); one teacher-forced pass per
    batch, with ``intervention`` active when given.
    """
    value, template = answer_outcomes(
        model, traces, intervention=intervention, batch_size=batch_size
    )
    return float(np.mean(value & template))


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, **proportion_ci(k, n).to_dict()}


def _drop(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """``before - after`` (the drop) with Newcombe's interval and the exact McNemar p."""
    comparison = paired_binary(before.astype(int), after.astype(int))
    d = comparison.difference
    return {
        "drop": 0.0 - d.estimate,  # 0.0 - x: no "-0.0" in the record
        "low": 0.0 - d.high,
        "high": 0.0 - d.low,
        "mcnemar_p": comparison.p_value,
        "n": d.n,
    }


def measure(
    model_dir: str | Path,
    *,
    n: int = 500,
    seed: int = HELDOUT_SEED,
    draws: int = 100,
    draw_seed: int = 0,
) -> dict[str, Any]:
    """Every number of the model card, on ``n`` held-out problems, greedy decoding.

    1. Generation through plain ``transformers`` (``AutoModelForCausalLM``, the directory's
       tokenizer) with reasoning and with the ``"finished"`` filler; the value and the
       template of each answer judged apart (:func:`judge_answer`), every rate with its
       Wilson interval; the filler's value accuracy against chance (:data:`CHANCE_RATE`,
       two-sided exact binomial test).
    2. Split: the first ``n // 2`` problems (half A) rank heads and give the ablation means;
       the rest (half B) measure the ablations, so no head is chosen on the problems that
       test it. Ranking: :class:`~reasoning_circuits.attention.AttentionProfile` of the
       model's own correct traces on A, by the reasoning mass of the rows predicting the
       answer's number (``query="emit"``) and of all answer rows (``"answer"``).
    3. Ablation on B: each head's mean output per answer offset (``by="segment_offset"``,
       means over A's teacher-forced traces) replaces its output at the answer positions;
       teacher-forced value and template outcomes (:func:`answer_outcomes`) for the top 3
       by ``emit``, each of them alone, each leave-one-out pair, the top 3 by ``answer``,
       every single head, and ``draws`` distinct random triples of heads outside the emit
       top 3 (``random.Random(draw_seed)``). Drops are paired against the unablated
       teacher-forced outcomes (Newcombe interval, exact McNemar). Unfinished reasoning
       counts as wrong on both sides.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasoning_circuits.models import load_model

    if n < 4:
        raise ValueError(f"n must be at least 4 (two problems per half), got {n}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir)
    problems = make_problems(n, seed=seed, split="heldout")
    with_reasoning = generate(hf_model, problems, mode="reasoning", tokenizer=tokenizer)
    finished = generate(hf_model, problems, mode="finished", tokenizer=tokenizer)

    def rates(results: list[Generated]) -> dict[str, Any]:
        return {
            "value": _rate(sum(g.value_correct for g in results), len(results)),
            "template": _rate(sum(g.template_correct for g in results), len(results)),
            "exact": _rate(sum(g.correct for g in results), len(results)),
        }

    filler_k = sum(g.value_correct for g in finished)
    filler_p = float(binomtest(filler_k, n, CHANCE_RATE).pvalue)

    half = n // 2
    part_a, part_b = with_reasoning[:half], with_reasoning[half:]
    model = load_model(model_dir)
    own_a = [Trace.from_ids(g.ids, tokenizer) for g in part_a if g.correct]
    if len(own_a) < 2:
        raise ValueError(
            f"the model answered {len(own_a)} of the {half} ranking problems correctly; "
            "there is nothing to rank (train it longer, or pass more problems)"
        )
    profiles = AttentionProfile.compute(model, own_a, queries={"emit": predicting()}, batch_size=50)
    top = list(rank_heads(profiles, query="emit", key="reasoning", k=3))
    emit_scores = rank_heads(profiles, query="emit", key="reasoning", k=3).scores
    r2a = rank_heads(profiles, query="answer", key="reasoning", k=3)
    forced_a = forced_traces(tokenizer, [g for g in part_a if g.finished])
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    all_heads = [Head(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    means = mean_head_outputs(
        model, forced_a, all_heads, positions="answer", by="segment_offset", batch_size=50
    )
    done_b = np.array([g.finished for g in part_b])
    forced_b = forced_traces(tokenizer, [g for g in part_b if g.finished])

    def outcomes(heads: list[Head] | None) -> tuple[np.ndarray, np.ndarray]:
        iv = (
            None
            if heads is None
            else HeadIntervention(heads, "mean", positions="answer", means=means)
        )
        value, template = answer_outcomes(model, forced_b, intervention=iv)
        full_v, full_t = np.zeros(len(part_b), bool), np.zeros(len(part_b), bool)
        full_v[done_b], full_t[done_b] = value, template
        return full_v, full_t

    base_v, base_t = outcomes(None)
    m = len(part_b)

    def ablation(heads: list[Head]) -> dict[str, Any]:
        value, template = outcomes(heads)
        return {
            "heads": [str(h) for h in heads],
            "value": _rate(int(value.sum()), m),
            "template": _rate(int(template.sum()), m),
            "value_drop": _drop(base_v, value),
            "template_drop": _drop(base_t, template),
        }

    top_set = ablation(top)
    single_top = {str(h): ablation([h]) for h in top}
    leave_one_out = {str(h): ablation([o for o in top if o != h]) for h in top}
    single_all = {}
    for h in all_heads:
        value, template = outcomes([h])
        single_all[str(h)] = {"value": float(value.mean()), "template": float(template.mean())}
    rng = random.Random(draw_seed)
    others = [h for h in all_heads if h not in set(top)]
    triples = [tuple(sorted(c)) for c in itertools.combinations(others, 3)]
    chosen = rng.sample(triples, min(draws, len(triples)))
    value_drops, template_drops = [], []
    for heads in chosen:
        value, template = outcomes(list(heads))
        value_drops.append(float(base_v.mean() - value.mean()))
        template_drops.append(float(base_t.mean() - template.mean()))
    top_drop = top_set["value_drop"]["drop"]

    def spread(drops: list[float]) -> dict[str, float]:
        return {
            "mean": float(np.mean(drops)),
            "p5": float(np.percentile(drops, 5)),
            "p50": float(np.percentile(drops, 50)),
            "p95": float(np.percentile(drops, 95)),
            "max": float(np.max(drops)),
        }

    return {
        "n_problems": n,
        "heldout_seed": seed,
        "chance_rate": CHANCE_RATE,
        "with_reasoning": {
            **rates(with_reasoning),
            "finished": _rate(sum(g.finished for g in with_reasoning), n),
        },
        "finished_filler": {
            **rates(finished),
            "binomtest_p_vs_chance": filler_p,
            "distinguishable_from_chance": filler_p < 0.05,
        },
        "split": {"rank_on": [0, half], "measure_on": [half, n]},
        "ablation_means": "segment_offset, over the answer positions of half A",
        "ablation_accuracy": "teacher-forced on half B (answer_outcomes)",
        "unablated": {
            "value": _rate(int(base_v.sum()), m),
            "template": _rate(int(base_t.sum()), m),
            "generated_value": _rate(sum(g.value_correct for g in part_b), m),
        },
        "top_heads_emit": {"heads": [str(h) for h in top], "mass": [float(s) for s in emit_scores]},
        "top_heads_answer": {
            "heads": [str(h) for h in r2a],
            "mass": [float(s) for s in r2a.scores],
        },
        "answer_split": {
            part: float(profiles.mean("answer", part).mean()) for part in profiles.parts
        },
        "ablation_top3_emit": top_set,
        "ablation_top3_answer": ablation(list(r2a)),
        "ablation_single_of_top3": single_top,
        "ablation_leave_one_out_of_top3": leave_one_out,
        "ablation_single_heads": single_all,
        "random3": {
            "draws": len(chosen),
            "of": len(triples),
            "seed": draw_seed,
            "heads": [[str(h) for h in heads] for heads in chosen],
            "value_drop": value_drops,
            "template_drop": template_drops,
            "value_drop_summary": spread(value_drops),
            "template_drop_summary": spread(template_drops),
            "share_value_drop_at_least_top3": float(np.mean([d >= top_drop for d in value_drops])),
        },
    }
