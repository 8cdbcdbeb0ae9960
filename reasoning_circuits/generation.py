"""Answers generated under an intervention, and how often they are right.

Teacher-forced metrics (:mod:`reasoning_circuits.metrics`) score the answer a trace already
has. The question "does the model still get it right without these heads?" needs the model
to *write* the answer with the intervention in place. :func:`generate_answers` keeps each
trace up to and including ``</think>``, then continues greedily with the intervention active
at every step; :func:`answers_correct` grades the continuations (1.0 right, 0.0 wrong), so
its mean is the accuracy and ``iv.effect(model, traces, answers_correct)`` gives the change
in accuracy with a bootstrap CI.

Positions during generation: the generated tokens are the trace's ``answer`` segment. An
intervention at ``positions="answer"`` therefore acts on every generated token, and a
knockout ``query="answer", key="reasoning"`` stops the generated answer from reading the
reasoning. The reasoning itself is the trace's own (teacher-forced), so an intervention at
the answer cannot change it.

Batches: traces of similar length run together (``batch_size``, default 8), greedily, with
the model's KV cache. The kept parts have different lengths, so a batch is **left-padded**:
every row ends at the same column and the next token of every row goes into one new column.
Column c of row r then holds position ``c - pad[r]`` of its trace. Three things keep each row
exactly what it would be alone: the attention mask hides the pad columns, the position ids
count only real tokens (``cumsum(mask) - 1``, so rotary and learned position embeddings see
the unpadded positions), and the intervention's hooks are built with
``left_pad=pad`` (:meth:`~reasoning_circuits.interventions.HeadIntervention.hooks`), so a
segment, a segment offset, a source position or a knockout's query and key columns are
found per row and pad columns are never written. A row that stops (EOS, ``stop``,
``max_new_tokens``) leaves the batch and the cache. The batch size therefore changes only
the speed: the answers are those of generating each trace alone. Caveat: padded matrix
products round differently (logits differ by ~1e-6 relative), which could flip a greedy
choice only where two tokens tie to that precision.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from reasoning_circuits import grading
from reasoning_circuits._hooks import Intervention
from reasoning_circuits._inputs import as_traces, check_batch_size, check_traces, describe_trace
from reasoning_circuits._options import check_option
from reasoning_circuits.collection import _select_rows
from reasoning_circuits.errors import ContextLengthError
from reasoning_circuits.trace import Segment, Trace

__all__ = ["answers_correct", "generate_answers", "same_final_number"]

Grader = Callable[[str, str], bool]
GradeKind = Literal["math", "gsm8k"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def same_final_number(generated: str, gold: str) -> bool:
    """Whether the last number in ``generated`` equals the last number in ``gold``.

    Commas inside numbers are ignored (``1,000 == 1000``). When ``gold`` has no number, the
    two stripped strings are compared instead.
    """
    want = _NUMBER.findall(gold)
    if not want:
        return generated.strip() == gold.strip()
    got = _NUMBER.findall(generated)
    if not got:
        return False
    return float(got[-1].replace(",", "")) == float(want[-1].replace(",", ""))


def _grown(trace: Trace, width: int) -> Trace:
    """``trace`` cut after ``</think>`` and grown to ``width``: the rest is the answer."""
    start = trace["answer"].start
    segments = dict(trace.segments)
    segments["answer"] = Segment("answer", start, width)
    segments["eos"] = Segment("eos", width, width)
    ids = trace.ids[:start] + (0,) * (width - start)
    offsets = trace.offsets[:start] + ((0, 0),) * (width - start)
    return dataclasses.replace(trace, ids=ids, offsets=offsets, segments=MappingProxyType(segments))


@torch.no_grad()
def generate_answers(
    model: Any,
    traces: Trace | Sequence[Trace],
    intervention: Intervention | None = None,
    *,
    max_new_tokens: int = 32,
    stop: str | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
) -> list[str]:
    """Greedy answers written after each trace's ``</think>``, with ``intervention`` active.

    Each trace is kept up to its answer (``trace.ids[:trace["answer"].start]``) and
    continued greedily; ``batch_size`` traces of similar length run together, left-padded
    (see the module docstring). A trace stops at the tokenizer's EOS token, after ``stop``
    appears in its decoded answer (e.g. ``"\\n"``), or after ``max_new_tokens``; the batch
    size never changes the result. Returns the decoded answers (EOS excluded), one per
    trace, in the order of ``traces``. ``progress``: a progress bar (default: more than 10
    traces).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_batch_size(batch_size)
    traces = as_traces(traces)
    # the answer is regenerated: the kept part is everything before it
    check_traces(model, traces, what="generate_answers")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    for index, trace in enumerate(traces):
        if trace["answer"].start == 0:
            raise ValueError(
                f"{describe_trace(trace, index)} has nothing before its answer to continue "
                "from; give it a prompt (and reasoning) before the answer"
            )
        if n_ctx and trace["answer"].start + max_new_tokens > n_ctx:
            raise ContextLengthError(
                f"{describe_trace(trace, index)}: {trace['answer'].start} tokens before the "
                f"answer + max_new_tokens={max_new_tokens} exceed the model's context of "
                f"{n_ctx}; lower max_new_tokens or shorten the trace with rc.fit_to_context"
            )
    # batches of similar prefix length waste the least on padding
    order = sorted(range(len(traces)), key=lambda i: traces[i]["answer"].start)
    answers: list[str] = [""] * len(traces)
    show = progress if progress is not None else len(traces) > 10
    with tqdm(total=len(traces), desc="generating", unit="trace", disable=not show) as bar:
        for begin in range(0, len(order), batch_size):
            chunk = order[begin : begin + batch_size]

            def done(row: int, text: str, chunk: list[int] = chunk) -> None:
                answers[chunk[row]] = text
                bar.update(1)

            _answer_batch(
                model,
                [traces[i] for i in chunk],
                intervention,
                max_new_tokens=max_new_tokens,
                stop=stop,
                on_done=done,
            )
    return answers


def _answer_batch(
    model: Any,
    traces: list[Trace],
    intervention: Intervention | None,
    *,
    max_new_tokens: int,
    stop: str | None,
    on_done: Callable[[int, str], None],
) -> None:
    """Greedy answers for one left-padded batch; ``on_done(row, text)`` as each row stops.

    Column c of row r holds position ``c - pads[r]`` of ``traces[r]``; the attention mask
    hides the pad columns and the position ids count only real tokens, so each row computes
    what it would alone. A row that stops leaves the batch (and the KV cache).
    """
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    device = model.cfg.device
    starts = [trace["answer"].start for trace in traces]
    width = max(starts)
    pads = [width - start for start in starts]
    columns = width + max_new_tokens  # what the batch can grow to
    grown = [_grown(t, s + max_new_tokens) for t, s in zip(traces, starts)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos or 0
    tokens = torch.full((len(traces), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(traces), width), dtype=torch.long)
    for row, (trace, start) in enumerate(zip(traces, starts)):
        tokens[row, width - start :] = torch.tensor(trace.ids[:start], dtype=torch.long)
        mask[row, width - start :] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # pad columns: 0, never attended to
    active = list(range(len(traces)))
    new: list[list[int]] = [[] for _ in traces]
    cache, offset = None, 0
    while active:
        hooks = (
            intervention.hooks(
                model,
                [grown[i] for i in active],
                width=columns,
                offset=offset,
                left_pad=[pads[i] for i in active],
            )
            if intervention is not None
            else []
        )
        with model.hooks(fwd_hooks=hooks):
            logits, cache = model(
                tokens,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                return_type="logits_and_cache",
            )
        chosen = logits[:, -1].argmax(-1)
        keep: list[int] = []
        for j, (row, token) in enumerate(zip(active, chosen.tolist())):
            if token == eos:
                on_done(row, tokenizer.decode(new[row]))
                continue
            new[row].append(token)
            text = tokenizer.decode(new[row])
            if len(new[row]) >= max_new_tokens or (stop is not None and stop in text):
                on_done(row, text)
            else:
                keep.append(j)
        if not keep:
            break
        offset = mask.shape[1]
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache = _select_rows(cache, index)
            mask, positions, chosen = mask[index], positions[index], chosen[index]
            active = [active[j] for j in keep]
        tokens = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = positions[:, -1:] + 1


def answers_correct(
    model: Any,
    traces: Trace | Sequence[Trace],
    intervention: Intervention | None = None,
    *,
    gold: Sequence[str] | None = None,
    grader: Grader | GradeKind = "math",
    max_new_tokens: int = 32,
    stop: str | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
) -> Float[np.ndarray, " trace"]:
    """1.0 where the answer generated under ``intervention`` is right, else 0.0; per trace.

    ``gold`` defaults to ``trace.metadata["gold"]`` when present, else the trace's own
    answer text (then it measures whether the model still writes the answer it wrote).
    ``grader``: ``"math"`` (default) or ``"gsm8k"`` grade with
    :func:`reasoning_circuits.grading.grade_many` (the last ``\\boxed{}``, ``####`` or last
    number, compared by value with math-verify), the gold's own answer extracted the same
    way when it is a whole answer text; or a callable ``grader(generated, gold) -> bool``.
    ``max_new_tokens``, ``stop``, ``batch_size`` and ``progress`` go to
    :func:`generate_answers`. The signature fits :func:`reasoning_circuits.measure_effect`:
    ``iv.effect(model, traces, answers_correct)`` (right/wrong outcomes get the exact
    McNemar test and a paired-proportion interval).
    """
    trace_list = as_traces(traces)
    if gold is None:
        gold = [str(t.metadata.get("gold", t.text_of("answer"))) for t in trace_list]
    if len(gold) != len(trace_list):
        raise ValueError(f"{len(gold)} gold answers for {len(trace_list)} traces")
    generated = generate_answers(
        model,
        trace_list,
        intervention,
        max_new_tokens=max_new_tokens,
        stop=stop,
        batch_size=batch_size,
        progress=progress,
    )
    if callable(grader):
        return np.asarray([float(grader(g, want)) for g, want in zip(generated, gold)])
    check_option(grader, GradeKind, "grader")
    values = [
        grading.extract_answer(str(want), grader, think="optional") or str(want) for want in gold
    ]
    grades = grading.grade_many(generated, values, kind=grader, think="optional")
    return np.asarray([float(g.correct) for g in grades])
