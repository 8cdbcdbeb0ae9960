"""Metrics of what a model does with an answer, per trace, with or without an intervention.

* :func:`logit_diff`: ``logit[pos, a] - logit[pos, b]``, the usual patching metric.
* :func:`normalized_logit_diff`: ``(LD_patched - LD_corr) / (LD_clean - LD_corr)``; 0 = no
  effect, 1 = full recovery. When clean and corrupted barely differ the ratio is noise: where
  the gap is below ``rel_tol`` of the logit differences' own size it is NaN and a warning
  says how many such cases there were. :func:`pair_filter` keeps only pairs whose answer
  flips (R2A: ``LD_clean > margin`` and ``LD_corr < -margin``).
* :func:`answer_logprob`: the log-probability of the answer tokens given everything before
  them (teacher-forced), summed over the answer, in nats. Works batched.
* :func:`answer_kl`: the mean over answer positions of KL(p_before ‖ p_after) between the
  next-token distributions of two runs, in nats.

``answer_logprob`` and ``answer_kl`` take ``method=``: ``"pattern"`` runs the bridge with the
intervention's hooks; ``"fast"`` runs the Hugging Face modules with flash attention (no
``[T × T]`` matrix; no intervention or an attention knockout only, see
:mod:`reasoning_circuits._fast_knockout`); ``"auto"`` (default) is fast from 1024 tokens.

Every trace metric takes ``(model, traces, intervention=None, *, batch_size, progress)``, where
``traces`` is one :class:`Trace` or a sequence, runs ``batch_size`` traces per forward pass
and returns one value per trace (``numpy``), so :func:`reasoning_circuits.measure_effect`
can compare before and after. (Patching sweeps use another kind of metric, on logits:
``LogitMetric`` in :mod:`reasoning_circuits.patching`.)
Accuracy of answers the model *generates* under an intervention is in
:mod:`reasoning_circuits.generation` (``answers_correct``), with the same signature.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from reasoning_circuits import _fast_knockout
from reasoning_circuits._hooks import Intervention
from reasoning_circuits._inputs import as_traces, batches, check_traces, describe_trace
from reasoning_circuits._options import check_option
from reasoning_circuits.attention import Method
from reasoning_circuits.trace import Trace, pad_traces

__all__ = [
    "TraceMetric",
    "answer_kl",
    "answer_logprob",
    "batch_logits",
    "logit_diff",
    "normalized_logit_diff",
    "pair_filter",
]

TraceMetric = Callable[..., Float[np.ndarray, " trace"]]
"""``metric(model, traces, intervention=None, *, batch_size=..., progress=...)`` → one value per
trace, e.g. :func:`answer_logprob` or :func:`reasoning_circuits.generation.answers_correct`."""


@torch.no_grad()
def _logits_one_batch(
    model: Any,
    traces: Sequence[Trace],
    intervention: Intervention | None,
    rows: Sequence[Sequence[int]] | None,
    *,
    fast: bool = False,
) -> Tensor:
    tokens, mask = pad_traces(traces)
    width = tokens.shape[1]
    if fast:
        assert rows is not None
        return _fast_logits(model, traces, intervention, rows, tokens)
    hooks = intervention.hooks(model, traces, width=width) if intervention is not None else []
    device = model.cfg.device
    if rows is not None:
        longest = max(map(len, rows))
        index = torch.tensor([list(r) + [r[-1]] * (longest - len(r)) for r in rows])
        if index.min() < 0 or index.max() >= width:
            raise IndexError(f"rows must lie in 0..{width - 1}")

        def keep_rows(hidden: Tensor, *, hook: Any) -> Tensor:
            gather = index.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
            return hidden.gather(1, gather)

        hooks = [*hooks, ("unembed.hook_in", keep_rows)]
    logits = model.run_with_hooks(
        tokens.to(device),
        attention_mask=mask.to(device) if len(traces) > 1 else None,
        fwd_hooks=hooks,
    )
    return logits.float().cpu()


def _fast_logits(
    model: Any,
    traces: Sequence[Trace],
    intervention: Intervention | None,
    rows: Sequence[Sequence[int]],
    tokens: Tensor,
) -> Tensor:
    """:func:`_logits_one_batch` on the fast path (a knockout or nothing): the chosen rows
    only, without any ``[T × T]`` or ``[T × vocab]`` tensor."""
    width = tokens.shape[1]
    edits = {}
    if intervention is not None:
        edits = intervention._fast_edits(model, traces, width=width)  # type: ignore[attr-defined]
    hidden = _fast_knockout.run_hidden(model, tokens, edits)
    longest = max(map(len, rows))
    index = torch.tensor([list(r) + [r[-1]] * (longest - len(r)) for r in rows])
    if index.min() < 0 or index.max() >= width:
        raise IndexError(f"rows must lie in 0..{width - 1}")
    gather = index.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
    return _fast_knockout.block_logits(model, hidden.gather(1, gather)).cpu()


def batch_logits(
    model: Any,
    traces: Trace | Sequence[Trace],
    intervention: Intervention | None = None,
    *,
    rows: Sequence[Sequence[int]] | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    method: Method = "auto",
) -> Float[Tensor, "batch row vocab"]:
    """Logits of right-padded ``traces``, with the intervention if given.

    ``rows``: for each trace, the positions whose logits are wanted; only those are
    unembedded (on a long trace the unembedding of every position costs more memory than
    the rest of the forward pass: 4096 positions × a 151k vocabulary is 2.5 GB). Row r of
    trace i is then ``rows[i][r]``; shorter lists are padded by repeating their last
    position. Default: every position, ``[batch, pos, vocab]``, padded positions NaN.
    ``batch_size``: traces per forward pass (default: all in one).
    ``method``: as in :func:`answer_logprob`: ``"fast"`` runs no intervention or an
    attention knockout without any ``[T × T]`` matrix; ``"auto"`` takes it from
    ``rc.attention.AUTO_FAST_TOKENS`` tokens when it can.
    """
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="batch_logits")
    check_option(method, Method, "method")
    if rows is not None and (len(rows) != len(trace_list) or any(len(r) == 0 for r in rows)):
        raise ValueError("rows needs one non-empty list of positions per trace")
    fast = _fast_knockout.use_fast(model, method, max(map(len, trace_list)), intervention)
    parts: list[tuple[list[int], Tensor]] = []
    for indices, chunk in batches(
        trace_list, batch_size or len(trace_list), desc="logits", progress=progress
    ):
        chunk_rows = None if rows is None else [rows[i] for i in indices]
        if fast and chunk_rows is None:  # every position
            every = [range(max(map(len, chunk)))] * len(chunk)
            logits = _logits_one_batch(model, chunk, intervention, every, fast=True)
        else:
            logits = _logits_one_batch(model, chunk, intervention, chunk_rows, fast=fast)
        if chunk_rows is None:
            for row, trace in enumerate(chunk):
                logits[row, len(trace) :] = float("nan")  # padding: no logits there
        parts.append((indices, logits))
    if len(parts) == 1 and parts[0][0] == list(range(len(trace_list))):
        return parts[0][1]
    width = max(p.shape[1] for _, p in parts)
    vocab = parts[0][1].shape[-1]
    out = torch.full((len(trace_list), width, vocab), float("nan"))
    for indices, logits in parts:
        for row, index in enumerate(indices):
            out[index, : logits.shape[1]] = logits[row]
            if rows is not None and logits.shape[1] < width:  # repeat the last row, as documented
                out[index, logits.shape[1] :] = logits[row, -1]
    return out


def logit_diff(
    logits: Float[Tensor, "batch pos vocab"],
    token_a: int | Sequence[int],
    token_b: int | Sequence[int],
    *,
    position: int | Sequence[int] = -1,
) -> Float[np.ndarray, " batch"]:
    """``logits[i, position_i, a_i] - logits[i, position_i, b_i]`` per batch row."""
    batch = logits.shape[0]
    rows = torch.arange(batch)
    pos = (
        torch.as_tensor(position).expand(batch)
        if np.ndim(position) == 0
        else torch.as_tensor(position)
    )
    a = (
        torch.as_tensor(token_a).expand(batch)
        if np.ndim(token_a) == 0
        else torch.as_tensor(token_a)
    )
    b = (
        torch.as_tensor(token_b).expand(batch)
        if np.ndim(token_b) == 0
        else torch.as_tensor(token_b)
    )
    return (logits[rows, pos, a] - logits[rows, pos, b]).numpy()


def normalized_logit_diff(
    patched: Float[np.ndarray, "..."] | float,
    clean: Float[np.ndarray, "..."] | float,
    corrupted: Float[np.ndarray, "..."] | float,
    *,
    rel_tol: float = 0.05,
) -> Float[np.ndarray, "..."]:
    """``(patched - corrupted) / (clean - corrupted)``: 0 no effect, 1 full recovery.

    The ratio is only meaningful when clean and corrupted clearly differ. Where
    ``|clean - corrupted| < rel_tol * max(|clean|, |corrupted|, 1)`` it is NaN, with a
    warning that counts such entries: a gap of 0.002 would turn a shift of 0.01 into "500%
    recovery". The threshold scales with the logit differences themselves (a gap of 0.2
    between 10.0 and 9.8 is as fragile as one of 0.002 near 0); the 1 sets a floor of
    ``rel_tol`` logits near zero. To keep only pairs where the answer really flips, filter
    them first with :func:`pair_filter`. Inputs broadcast; the result has their shape.
    """
    if not (np.isfinite(rel_tol) and rel_tol >= 0):
        raise ValueError(f"rel_tol must be a finite number >= 0, got {rel_tol}")
    patched_, clean_, corrupted_ = np.broadcast_arrays(
        np.asarray(patched, float), np.asarray(clean, float), np.asarray(corrupted, float)
    )
    gap = clean_ - corrupted_
    scale = np.maximum(np.maximum(np.abs(clean_), np.abs(corrupted_)), 1.0)
    small = ~(np.abs(gap) >= rel_tol * scale)  # NaN inputs count as too small
    if small.any():
        warnings.warn(
            f"{int(small.sum())} of {small.size} normalised logit differences are NaN: there "
            f"|clean - corrupted| < {rel_tol} × max(|clean|, |corrupted|, 1), so the ratio "
            "would be noise. Keep pairs where the answer flips (rc.metrics.pair_filter), or "
            "lower rel_tol",
            RuntimeWarning,
            stacklevel=2,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(small, np.nan, (patched_ - corrupted_) / np.where(small, 1.0, gap))


def pair_filter(
    clean_ld: Float[np.ndarray, "..."] | float,
    corrupted_ld: Float[np.ndarray, "..."] | float,
    *,
    margin: float,
) -> Bool[np.ndarray, "..."]:
    """R2A's filter of clean/corrupted pairs: ``clean_ld > margin`` and
    ``corrupted_ld < -margin``.

    ``clean_ld`` and ``corrupted_ld`` are the logit difference ``logit[clean answer] -
    logit[corrupted answer]`` on the clean and on the corrupted run; ``margin`` is in the
    same units (logits). A pair passes when the clean run clearly prefers the clean answer and the
    corrupted run clearly prefers the corrupted one, so the answer flips and the normalised
    score of :func:`normalized_logit_diff` has a denominator of at least ``2 * margin``.
    Returns a boolean mask of the broadcast shape (NaN fails).
    """
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0 (in logits), got {margin}")
    clean_, corrupted_ = np.broadcast_arrays(
        np.asarray(clean_ld, float), np.asarray(corrupted_ld, float)
    )
    return (clean_ > margin) & (corrupted_ < -margin)


def _answer_positions(trace: Trace) -> tuple[int, int]:
    """Prediction rows ``[start - 1, stop - 1)`` for the answer tokens ``[start, stop)``."""
    answer = trace["answer"]
    if len(answer) == 0:
        raise ValueError(
            f"{describe_trace(trace)} has an empty answer; there is nothing to score. Leave out "
            "traces whose answer is empty (unfinished generations), or score another segment"
        )
    return answer.start - 1, answer.stop - 1


def _answer_rows(traces: Sequence[Trace]) -> list[range]:
    return [range(*_answer_positions(t)) for t in traces]


def answer_logprob(
    model: Any,
    traces: Trace | Sequence[Trace],
    intervention: Intervention | None = None,
    *,
    batch_size: int = 8,
    progress: bool | None = None,
    method: Method = "auto",
) -> Float[np.ndarray, " trace"]:
    """Σ over answer tokens of log p(token | everything before), per trace, in nats.

    ``method``: how attention runs. ``"pattern"``: the bridge's eager forward with the
    intervention's hooks (any intervention). ``"fast"``: the Hugging Face modules with
    flash attention, no ``[T × T]`` matrix and logits only at the answer's prediction rows
    (no intervention, or an attention knockout; anything else is refused, see
    :mod:`reasoning_circuits._fast_knockout`); the same numbers within float rounding.
    ``"auto"`` (default): fast from ``rc.attention.AUTO_FAST_TOKENS`` (1024) tokens when it
    can run, else pattern.
    """
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="answer_logprob")
    check_option(method, Method, "method")
    fast = _fast_knockout.use_fast(model, method, max(map(len, trace_list)), intervention)
    out = np.empty(len(trace_list))
    for indices, chunk in batches(
        trace_list, batch_size, desc="answer log-prob", progress=progress
    ):
        rows = _answer_rows(chunk)
        logprobs = _logits_one_batch(model, chunk, intervention, rows, fast=fast).log_softmax(-1)
        for i, (index, trace, span) in enumerate(zip(indices, chunk, rows)):
            targets = trace.tokens[0, span.start + 1 : span.stop + 1]
            out[index] = float(logprobs[i, torch.arange(len(span)), targets].sum())
    return out


def answer_kl(
    model: Any,
    traces: Trace | Sequence[Trace],
    intervention: Intervention,
    *,
    batch_size: int = 8,
    progress: bool | None = None,
    method: Method = "auto",
) -> Float[np.ndarray, " trace"]:
    """Mean over answer positions of KL(before ‖ after) of the next-token distributions, nats.

    ``method``: as in :func:`answer_logprob` (both runs take the same path)."""
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="answer_kl")
    check_option(method, Method, "method")
    fast = _fast_knockout.use_fast(model, method, max(map(len, trace_list)), intervention)
    out = np.empty(len(trace_list))
    for indices, chunk in batches(trace_list, batch_size, desc="answer KL", progress=progress):
        rows = _answer_rows(chunk)
        before = _logits_one_batch(model, chunk, None, rows, fast=fast).log_softmax(-1)
        after = _logits_one_batch(model, chunk, intervention, rows, fast=fast).log_softmax(-1)
        for i, (index, span) in enumerate(zip(indices, rows)):
            p, q = before[i, : len(span)], after[i, : len(span)]
            out[index] = float((p.exp() * (p - q)).sum(-1).mean())
    return out
