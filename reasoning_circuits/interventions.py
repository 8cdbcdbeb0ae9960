"""Head interventions: change what chosen heads write, at chosen positions, and measure it.

A :class:`HeadIntervention` names some heads, an action and where it applies:

* ``"zero"``: the head writes nothing (its ``hook_z`` output is set to 0);
* ``"scale"``: the head's output is multiplied by ``scale``;
* ``"mean"``: the head writes its mean output over a reference set of traces (see
  :func:`mean_head_outputs`): mean ablation removes what the head says *about this input*
  while keeping what it says on average, so the residual stream stays in distribution.
  *Which* mean is a choice (``by=``, below);
* ``"patch"``: the head writes what it wrote in a *source* run (see
  :func:`capture_head_outputs`): the clean/corrupted patching of activation-patching studies;
* ``"resample"``: the same mechanics, named for resample ablation: the source is the run of
  *another* input (e.g. a different problem), so the head says what it would say there;
* ``"knockout"``: the head cannot attend from the ``query`` segment to the ``key`` segment
  (e.g. answer → reasoning), as if those keys were not there.

The first five act on ``blocks.{layer}.attn.hook_z`` (``[batch, pos, head, d_head]``, one slot
per *query* head, also in grouped-query models), i.e. on what the head writes before the output
projection. Positions are a segment name (``"answer"``), a :class:`Segment`, token indices, or
``None`` for every position; with several traces in a batch each row gets its own positions.

Which source position patches which target position
---------------------------------------------------
Two traces rarely have the same length, so "position p of the source" is usually another
part of the text: copied by absolute position, the answer of a 139-token trace patched from
an 83-token trace would read past the source's end (zeros), and from a longer source it would
read its prompt or reasoning. So patch and resample sources are aligned **by segment**
(``align="segment"``, the default): target position (segment s, offset i) takes the source's
(segment s, offset i), as :func:`reasoning_circuits.pairs.align_pair` does for patching
sweeps. A target position whose segment is longer in the target than in the source has no
counterpart, and the intervention **refuses** it (:class:`PairAlignmentError`, naming the
trace, the segment and both lengths) rather than inventing a value. ``align="absolute"``
copies position p to position p, for pairs built to be equally long; it too refuses positions
past the source's end. The source carries its traces for this (:class:`HeadOutputs`); a
source of several traces says which target each one patches (``targets=``).

During generation (:mod:`reasoning_circuits.generation`) the answer grows one token at a time,
and the refusal comes at the step that would need an answer offset the source lacks: keep
``max_new_tokens`` within the source's answer, or stop generation earlier (``stop=``).

Which mean
----------
``mean_head_outputs(..., by=...)`` offers three means, and the choice matters:

* ``by="pooled"``: one vector per head, the mean over every chosen position of every
  reference trace, written into every intervened position. Right when the positions do not
  differ systematically (free text). Wrong on a fixed template: the tiny reasoner's answer is
  always ``The answer is N.``, and what a head writes at offset 3 is not what it writes at
  offset 10; one pooled vector everywhere breaks the template itself, which then reads as
  the head being causal for the answer.
* ``by="segment_offset"``: one vector per offset of one segment (offset i of the answer takes
  the mean over reference traces of the head's output at answer offset i). Right for
  templated or aligned segments; the reference traces must cover every offset intervened on
  (longer offsets are averaged over fewer traces: ``HeadMeans.counts``).
* ``by="token"``: one vector per token id within one segment (the mean over the positions of
  that segment holding that token). Right where a template's tokens recur at shifting
  offsets; the token at a position is read from the forward pass itself, so it also works
  during generation.

A position the means do not cover (an offset past the longest reference segment, a token the
reference never had) is refused, or takes the pooled mean with ``fallback="pooled"``.

Knockout
--------
``"knockout"`` edits the pre-softmax scores (``hook_attn_scores``, which in the
``TransformerBridge`` already holds the causal mask as the dtype's minimum) so that blocked
keys get that same minimum, and re-applies the causal mask itself, so no future key can ever
get weight. Each row then renormalises over the visible keys that remain: "the head never saw
those keys". A row whose *every* visible key is blocked has nothing left to read; its pattern
row is set to zero (``hook_pattern``), so the head writes nothing there (a warning gives the
number of such rows). Without this, such a row would spread uniformly over all positions,
future ones included.

Use it as hooks (``model.run_with_hooks(tokens, fwd_hooks=iv.hooks(model, traces))``) or as
a context manager (``with iv.apply(model, traces): model(tokens)``).

On long traces the ``[batch, head, T, T]`` scores these hooks edit dominate memory. The answer
metrics (``answer_logprob``, ``answer_kl``, ``measure_effect``, :meth:`HeadIntervention.effect`)
therefore take ``method="fast"`` for knockouts: the same numbers (within float rounding)
from flash-attention calls over the keys each row may still see, merged by their
log-sum-exps, without any ``[T × T]`` matrix (:mod:`reasoning_circuits._fast_knockout`);
``method="auto"`` (default) takes it from 1024 tokens. Other actions run only as hooks.

Caveat: an intervention at position p changes every later position through attention; an
intervention on the answer positions leaves the prompt and the reasoning untouched.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from reasoning_circuits import _fast_knockout
from reasoning_circuits._hooks import Hook, act_name, hook_layer
from reasoning_circuits._inputs import (
    as_traces,
    batches,
    check_model,
    check_traces,
    describe_trace,
)
from reasoning_circuits._options import check_option
from reasoning_circuits.attention import Method as AttentionMethod
from reasoning_circuits.effects import Effect, measure_effect
from reasoning_circuits.errors import PairAlignmentError
from reasoning_circuits.heads import Head, as_heads
from reasoning_circuits.metrics import TraceMetric
from reasoning_circuits.trace import SEGMENT_NAMES, Segment, Trace, pad_traces

__all__ = [
    "Align",
    "Effect",
    "Fallback",
    "HeadIntervention",
    "HeadMeans",
    "HeadOutputs",
    "MeanBy",
    "Positions",
    "capture_head_outputs",
    "mean_head_outputs",
    "position_mask",
]

Action = Literal["zero", "mean", "scale", "patch", "resample", "knockout"]
Align = Literal["segment", "absolute"]
"""How patch/resample sources map to target positions: by segment offset, or by position."""
MeanBy = Literal["pooled", "segment_offset", "token"]
"""Which mean a mean ablation writes: one per head, one per segment offset, one per token."""
Fallback = Literal["refuse", "pooled"]
"""What a position the means do not cover gets: a refusal, or the pooled mean."""
Positions = str | Segment | Sequence[int] | None


def position_mask(traces: Sequence[Trace], positions: Positions, width: int) -> Tensor:
    """A ``[batch, width]`` bool mask of the chosen positions of each trace (row = trace)."""
    mask = torch.zeros(len(traces), width, dtype=torch.bool)
    for row, trace in enumerate(traces):
        if positions is None:
            mask[row, : len(trace)] = True
        elif isinstance(positions, str):
            mask[row, trace[positions].slice] = True
        elif isinstance(positions, Segment):
            mask[row, positions.slice] = True
        else:
            index = torch.as_tensor(list(positions), dtype=torch.long)
            if len(index) and (index.min() < -len(trace) or index.max() >= len(trace)):
                raise IndexError(
                    f"positions {list(positions)} fall outside a trace of {len(trace)} tokens"
                )
            mask[row, index % len(trace)] = True
    return mask


def _check_left_pad(left_pad: Sequence[int] | None, n_rows: int) -> Int[Tensor, " batch"]:
    """``left_pad`` as a ``[batch]`` tensor (zeros for ``None``), refused unless it gives one
    count >= 0 per row."""
    if left_pad is None:
        return torch.zeros(n_rows, dtype=torch.long)
    if isinstance(left_pad, str | bytes) or not isinstance(left_pad, Iterable):
        raise TypeError(
            f"left_pad must be a sequence of ints, one per row, got {type(left_pad).__name__}"
        )
    pads = list(left_pad)
    counts: list[int] = []
    for pad in pads:
        try:  # ints, numpy ints and integer 0-d tensors; not floats, not bools
            counts.append(-1 if isinstance(pad, bool) else operator.index(pad))
        except TypeError:
            counts.append(-1)
    if len(pads) != n_rows or min(counts, default=0) < 0:
        raise ValueError(
            f"left_pad must give one int >= 0 per row ({n_rows} rows), got {pads!r}: the "
            "number of pad columns before each trace of a left-padded batch"
        )
    return torch.tensor(counts, dtype=torch.long)


def _to_columns(by_position: Tensor, pads: Int[Tensor, " batch"], fill: bool | int) -> Tensor:
    """``[batch, width, ...]`` indexed by trace position → the same indexed by batch column,
    row r moved right by ``pads[r]`` (column c holds position c - pads[r]); the pad columns
    take ``fill`` and positions pushed past ``width`` drop off."""
    if not bool(pads.any()):
        return by_position
    width = by_position.shape[1]
    out = torch.full_like(by_position, fill)
    for row, pad in enumerate(pads.tolist()):
        if pad < width:
            out[row, pad:] = by_position[row, : width - pad]
    return out


def _segment_frame(trace: Trace) -> tuple[list[int], list[int]]:
    """Per position of ``trace``: the index of its segment in ``SEGMENT_NAMES`` and its offset
    within that segment."""
    kinds, offsets = [0] * len(trace), [0] * len(trace)
    for kind, name in enumerate(SEGMENT_NAMES):
        segment = trace[name]
        for offset, position in enumerate(segment.positions):
            kinds[position], offsets[position] = kind, offset
    return kinds, offsets


# ---------------------------------------------------------------------------------- sources


class _ByHead:
    """Read access by head to ``self.values`` (``{Head: tensor}``), shared by the per-head
    result values below."""

    values: Mapping[Head, Tensor]

    def __getitem__(self, head: Head) -> Tensor:
        return self.values[head]

    def __contains__(self, head: object) -> bool:
        return head in self.values

    def __iter__(self) -> Iterator[Head]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, eq=False)
class HeadOutputs(_ByHead):
    """What some heads wrote on some source traces: the source of a patch or resample.

    ``values[head]`` is ``[n, pos, d_head]`` (row i = ``traces[i]``, right-padded with zeros);
    ``traces`` are the source traces, whose segments let a target position find its
    counterpart (see the module docstring). ``targets``, when given, names the trace each
    source row patches (``targets[i]`` takes row i): needed for more than one source row,
    because batched metrics reorder traces. Indexing (``outputs[head]``) reads ``values``.
    """

    values: Mapping[Head, Float[Tensor, "n pos d_head"]]
    traces: tuple[Trace, ...]
    targets: tuple[Trace, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "traces", tuple(as_traces(self.traces, name="traces")))
        if not self.values:
            raise ValueError("HeadOutputs needs values for at least one head")
        longest = max(map(len, self.traces))
        for head, tensor in self.values.items():
            if tensor.ndim != 3 or tensor.shape[0] != len(self.traces) or tensor.shape[1] < longest:
                raise ValueError(
                    f"values[{head}] has shape {tuple(tensor.shape)}; expected [{len(self.traces)}"
                    f", >= {longest}, d_head] for {len(self.traces)} source traces"
                )
        if self.targets is not None:
            targets = tuple(as_traces(self.targets, name="targets"))
            if len(targets) != len(self.traces):
                raise ValueError(
                    f"{len(targets)} targets for {len(self.traces)} source traces; give one "
                    "target per source (targets[i] is patched from traces[i])"
                )
            object.__setattr__(self, "targets", targets)

    def __repr__(self) -> str:
        heads = ", ".join(str(h) for h in self.values)
        paired = "" if self.targets is None else ", paired with targets"
        return f"HeadOutputs({heads} on {len(self.traces)} source traces{paired})"

    def check_paired(self) -> None:
        """Refuse a source of several traces that does not say which target each patches."""
        if len(self.traces) > 1 and self.targets is None:
            raise ValueError(
                f"this source holds {len(self.traces)} traces but does not say which target "
                "each one patches; capture it with rc.capture_head_outputs(model, sources, "
                "heads, targets=targets) (targets[i] is patched from sources[i]). Row order "
                "alone cannot pair them: batched metrics sort traces by length"
            )

    def rows_for(self, traces: Sequence[Trace]) -> list[int]:
        """The source row of each of ``traces``: 0 for a one-trace source, else the row whose
        target is that trace (the same object, or one with the same ids, or, for an answer
        being generated, the same ids before the answer)."""
        self.check_paired()
        if self.targets is None:
            return [0] * len(traces)
        targets = self.targets
        rows = []
        for index, trace in enumerate(traces):
            before = trace.ids[: trace["answer"].start]
            found = [j for j, t in enumerate(targets) if t is trace]
            found = found or [j for j, t in enumerate(targets) if t.ids == trace.ids]
            found = found or [
                j for j, t in enumerate(targets) if t.ids[: t["answer"].start] == before
            ]
            if not found:
                raise PairAlignmentError(
                    f"{describe_trace(trace, index)} is not among the source's targets; "
                    "capture the source with targets= listing the traces you intervene on"
                )
            if len(found) > 1:
                raise PairAlignmentError(
                    f"{describe_trace(trace, index)} matches targets {found}, each with its "
                    "own source; patch each target in its own intervention"
                )
            rows.append(found[0])
        return rows


@torch.no_grad()
def capture_head_outputs(
    model: Any,
    traces: Trace | Sequence[Trace],
    heads: Iterable[Head | tuple[int, int] | str],
    *,
    targets: Trace | Sequence[Trace] | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
) -> HeadOutputs:
    """Each head's ``hook_z`` output on the source ``traces``, with the traces' segments.

    Args:
        model: a ``TransformerBridge``.
        traces: the source traces.
        heads: ``Head`` objects, ``(layer, head)`` pairs or names such as ``"L3H4"``.
        targets: the traces the source will patch, ``targets[i]`` from ``traces[i]``; needed
            when there is more than one source trace.
        batch_size: traces per forward pass.
        progress: progress bars (default: more than one batch).

    Returns:
        A :class:`HeadOutputs`: ``outputs[head]`` is ``[n, pos, d_head]``, row i =
        ``traces[i]``, right-padded with zeros to the longest trace (padding is never
        patched: positions are aligned by segment and refused past the source's end).
    """
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="capture_head_outputs")
    target_list = None if targets is None else as_traces(targets, name="targets")
    chosen = as_heads(heads)
    width = max(map(len, trace_list))
    out = {h: torch.zeros(len(trace_list), width, int(model.cfg.d_head)) for h in chosen}
    current: dict[str, Any] = {}

    def grab(z: Tensor, *, hook: Any) -> None:
        layer = hook_layer(hook)
        valid, indices = current["valid"].to(z), current["indices"]
        for h in chosen:
            if h.layer == layer:
                values = (z[:, :, h.head] * valid[..., None]).detach().float().cpu()
                out[h][indices, : values.shape[1]] = values

    layers = sorted({h.layer for h in chosen})
    for indices, chunk in batches(trace_list, batch_size, desc="head outputs", progress=progress):
        tokens, valid = pad_traces(chunk)
        current.update(valid=valid, indices=torch.tensor(indices))
        model.run_with_hooks(
            tokens.to(model.cfg.device),
            attention_mask=valid.to(model.cfg.device) if len(chunk) > 1 else None,
            return_type=None,
            fwd_hooks=[(act_name("z", layer), grab) for layer in layers],
        )
    return HeadOutputs(out, tuple(trace_list), None if target_list is None else tuple(target_list))


# ------------------------------------------------------------------------------------ means


@dataclass(frozen=True, eq=False)
class HeadMeans(_ByHead):
    """Mean head outputs over reference traces, for ``HeadIntervention(..., "mean")``.

    Attributes:
        by: ``"pooled"``, ``"segment_offset"`` or ``"token"`` (see the module docstring).
        positions: what was averaged over: for ``"segment_offset"`` and ``"token"`` a segment
            name (the intervention must stay inside that segment).
        values: ``{Head: tensor}``: ``[d_head]`` pooled; ``[offset, d_head]`` per segment
            offset (row i = offset i); ``[token, d_head]`` per token (row order
            ``token_ids``).
        pooled: ``{Head: [d_head]}``, the pooled mean over the same positions (the
            ``fallback``).
        counts: ``[row]`` int, how many reference positions each row of ``values`` averages.
        token_ids: for ``by="token"``, the token id of each row.
        fallback: ``"refuse"``: a position the rows do not cover raises; ``"pooled"``: it
            takes the pooled mean.
    """

    by: MeanBy
    positions: Positions
    values: Mapping[Head, Tensor]
    pooled: Mapping[Head, Float[Tensor, " d_head"]]
    counts: Int[Tensor, " row"]
    token_ids: tuple[int, ...] = ()
    fallback: Fallback = "refuse"
    _lookup: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_option(self.by, MeanBy, "by")
        check_option(self.fallback, Fallback, "fallback")
        if self.by != "pooled" and not isinstance(self.positions, str):
            raise ValueError(
                f"by={self.by!r} averages within one segment; positions must be a segment "
                f"name such as 'answer', got {self.positions!r}"
            )
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "pooled", MappingProxyType(dict(self.pooled)))
        lookup = torch.full((max(self.token_ids, default=-1) + 1,), -1, dtype=torch.long)
        lookup[list(self.token_ids)] = torch.arange(len(self.token_ids))
        object.__setattr__(self, "_lookup", lookup)

    def __repr__(self) -> str:
        rows = "" if self.by == "pooled" else f", {len(self.counts)} rows"
        return (
            f"HeadMeans(by={self.by!r} over {self.positions!r}{rows}, "
            f"{len(self.values)} heads, fallback={self.fallback!r})"
        )

    def rows_of_tokens(self, ids: Tensor) -> Tensor:
        """The row of each token id in ``values`` (``by="token"``), -1 for unseen ids."""
        lookup = self._lookup.to(ids.device)
        inside = (ids >= 0) & (ids < len(lookup))
        return torch.where(inside, lookup[ids.clamp(0, max(len(lookup) - 1, 0))], -1)


@torch.no_grad()
def mean_head_outputs(
    model: Any,
    traces: Trace | Sequence[Trace],
    heads: Iterable[Head | tuple[int, int] | str],
    *,
    positions: Positions = "answer",
    by: MeanBy | None = None,
    fallback: Fallback = "refuse",
    batch_size: int = 16,
    progress: bool | None = None,
) -> HeadMeans:
    """Each head's mean ``hook_z`` output over the chosen positions of reference ``traces``.

    Args:
        model: a ``TransformerBridge``.
        traces: the reference traces (e.g. held-out traces of the same task).
        heads: ``Head`` objects, ``(layer, head)`` pairs or names such as ``"L3H4"``.
        positions: what to average over. ``by="segment_offset"`` and ``by="token"`` need a
            segment name (default ``"answer"``).
        by: ``"pooled"``: one ``[d_head]`` mean over all those positions (every position
            counts once); ``"segment_offset"``: one mean per offset of the segment;
            ``"token"``: one mean per token id in the segment. See the module docstring for
            when each is right. Not giving it warns and pools (the old behaviour).
        fallback: what a position the means do not cover gets when the intervention runs:
            ``"refuse"`` (raise) or ``"pooled"`` (the pooled mean).
        batch_size: traces per forward pass.
        progress: progress bars (default: more than one batch).

    Returns:
        A :class:`HeadMeans`; ``means[head]`` is the head's ``[d_head]`` (pooled) or
        ``[row, d_head]`` tensor.
    """
    if by is None:
        warnings.warn(
            "mean_head_outputs without by=: pooling one mean over every position "
            "(by='pooled'). One vector written into every position breaks fixed templates "
            "(an answer such as 'The answer is N.'); pass by='segment_offset' for one mean per "
            "offset of the segment, by='token' for one per token, or by='pooled' to keep this",
            UserWarning,
            stacklevel=3,  # past torch.no_grad's wrapper, to the caller
        )
        by = "pooled"
    check_option(by, MeanBy, "by")
    check_option(fallback, Fallback, "fallback")
    if by != "pooled" and not isinstance(positions, str):
        raise ValueError(
            f"by={by!r} averages within one segment; pass positions= a segment name such as "
            f"'answer', got {positions!r}"
        )
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="mean_head_outputs")
    chosen = as_heads(heads)
    d_head = int(model.cfg.d_head)
    layers = sorted({h.layer for h in chosen})

    def row_keys_of(batch: Sequence[Trace], tokens: Tensor, mask: Tensor) -> Tensor:
        """Per chosen position: its offset in the segment, or its token id (pooled: 0)."""
        if by == "segment_offset":
            assert isinstance(positions, str)
            starts = torch.tensor([t[positions].start for t in batch])
            return (torch.arange(tokens.shape[1])[None, :] - starts[:, None])[mask]
        if by == "token":
            return tokens[mask]
        return torch.zeros(int(mask.sum()), dtype=torch.long)

    # the rows (offsets 0..n-1, token ids, or one pooled row), known before any model run
    seen: set[int] = set()
    for _, batch in batches(trace_list, batch_size, desc="", progress=False):
        tokens, valid = pad_traces(batch)
        mask = position_mask(batch, positions, tokens.shape[1]) & valid.bool()
        seen.update(row_keys_of(batch, tokens, mask).tolist())
    if not seen:
        raise ValueError(f"no positions selected by {positions!r} in the reference traces")
    keys = sorted(seen)
    lookup = torch.full((keys[-1] + 1,), -1, dtype=torch.long)
    lookup[keys] = torch.arange(len(keys))
    sums = {h: torch.zeros(len(keys), d_head) for h in chosen}
    counts = torch.zeros(len(keys), dtype=torch.long)
    current: dict[str, Tensor] = {}

    def grab(z: Tensor, *, hook: Any) -> None:
        layer = hook_layer(hook)
        where, rows = current["mask"].to(z.device), current["rows"]
        for h in chosen:
            if h.layer == layer:
                sums[h].index_add_(0, rows, z[:, :, h.head][where].float().cpu())

    for _, batch in batches(trace_list, batch_size, desc="mean head outputs", progress=progress):
        tokens, valid = pad_traces(batch)
        mask = position_mask(batch, positions, tokens.shape[1]) & valid.bool()
        rows = lookup[row_keys_of(batch, tokens, mask)]
        counts += torch.bincount(rows, minlength=len(keys))
        current.update(mask=mask, rows=rows)
        model.run_with_hooks(
            tokens.to(model.cfg.device),
            attention_mask=valid.to(model.cfg.device) if len(batch) > 1 else None,
            return_type=None,
            fwd_hooks=[(act_name("z", layer), grab) for layer in layers],
        )
    total = counts.sum()
    pooled = {h: s.sum(0) / total for h, s in sums.items()}
    if by == "pooled":
        return HeadMeans(by, positions, pooled, pooled, counts, (), fallback)
    if by == "segment_offset":  # every trace covers offsets 0..its length - 1
        assert keys == list(range(len(keys)))
    values = {h: s / counts[:, None] for h, s in sums.items()}
    token_ids = tuple(keys) if by == "token" else ()
    return HeadMeans(by, positions, values, pooled, counts, token_ids, fallback)


# ----------------------------------------------------------------------------- intervention


@dataclass(frozen=True)
class HeadIntervention:
    """Heads, an action and where it applies.

    Args:
        heads: ``Head`` objects or ``(layer, head)`` pairs.
        action: ``"zero"``, ``"mean"``, ``"scale"``, ``"patch"``, ``"resample"``, ``"knockout"``.
        positions: where ``zero``/``mean``/``scale``/``patch``/``resample`` act: a segment
            name, a ``Segment``, token indices, or ``None`` (all positions).
        means: for ``"mean"``: a :class:`HeadMeans` from :func:`mean_head_outputs` (or a plain
            ``{Head: [d_head] tensor}``, used as a pooled mean).
        scale: for ``"scale"``: the factor.
        source: for ``"patch"``/``"resample"``: a :class:`HeadOutputs` from
            :func:`capture_head_outputs` on the source inputs.
        align: for ``"patch"``/``"resample"``: ``"segment"`` (default: target segment s,
            offset i ← source segment s, offset i) or ``"absolute"`` (position p ← p, for
            pairs of equal length). Positions without a counterpart are refused.
        query, key: for ``"knockout"``: segment names; ``query`` rows lose ``key`` keys.

    An argument the action does not use is refused (``ValueError``), not ignored.
    """

    heads: tuple[Head, ...]
    action: Action
    positions: Positions = None
    means: HeadMeans | dict[Head, Tensor] | None = None
    scale: float | None = None
    source: HeadOutputs | None = None
    align: Align | None = None
    query: str | None = None
    key: str | None = None

    def __init__(
        self,
        heads: Iterable[Head | tuple[int, int]],
        action: Action,
        *,
        positions: Positions = None,
        means: HeadMeans | dict[Head, Tensor] | None = None,
        scale: float | None = None,
        source: HeadOutputs | None = None,
        align: Align | None = None,
        query: str | None = None,
        key: str | None = None,
    ) -> None:
        chosen = tuple(as_heads(heads))
        if not chosen:
            raise ValueError("heads is empty; name at least one (layer, head)")
        check_option(action, Action, "action")
        # Each action reads its own arguments; one that it would ignore is refused, so a
        # typo such as scale= on a knockout cannot pass silently.
        given = {
            "positions": positions is not None,
            "means": means is not None,
            "scale": scale is not None,
            "source": source is not None,
            "align": align is not None,
            "query": query is not None,
            "key": key is not None,
        }
        uses = {
            "zero": {"positions"},
            "mean": {"positions", "means"},
            "scale": {"positions", "scale"},
            "patch": {"positions", "source", "align"},
            "resample": {"positions", "source", "align"},
            "knockout": {"query", "key"},
        }[action]
        ignored = [name for name, present in given.items() if present and name not in uses]
        if ignored:
            raise ValueError(
                f"action={action!r} does not use {', '.join(ignored)}; it takes "
                f"{', '.join(sorted(uses))}. Remove the extra arguments"
                + (
                    " (a knockout chooses its rows with query= and its keys with key=)"
                    if action == "knockout" and "positions" in ignored
                    else ""
                )
            )
        needs = {
            "mean": (means, "mean_head_outputs", "means"),
            "patch": (source, "capture_head_outputs", "source"),
            "resample": (source, "capture_head_outputs", "source"),
        }
        if action in needs:
            values, helper, name = needs[action]
            missing = [str(h) for h in chosen if values is None or h not in values]
            if missing:
                raise ValueError(
                    f"action={action!r} needs values for {missing}; compute them with "
                    f"rc.{helper}(model, traces, heads) and pass {name}=..."
                )
        if source is not None and not isinstance(source, HeadOutputs):
            raise TypeError(
                f"source must be the HeadOutputs of rc.capture_head_outputs(model, sources, "
                f"heads), got a {type(source).__name__}: it carries the source traces' "
                "segments, which say which source position patches which target position"
            )
        if action in ("patch", "resample"):
            align = align or "segment"
            check_option(align, Align, "align")
            assert source is not None
            source.check_paired()
        if isinstance(means, HeadMeans) and means.by != "pooled" and positions is None:
            raise ValueError(
                f"these means are per {means.by.replace('_', ' ')} of {means.positions!r} and "
                f"cover only that segment; pass positions={means.positions!r}"
            )
        if action == "scale" and scale is None:
            raise ValueError("action='scale' needs scale=, the factor (e.g. scale=0.5)")
        if action == "knockout" and (query is None or key is None):
            raise ValueError(
                "action='knockout' needs query= and key= segment names, e.g. "
                "query='answer', key='reasoning'"
            )
        object.__setattr__(self, "heads", chosen)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "scale", None if scale is None else float(scale))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "align", align)
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "key", key)

    def _check_heads(self, model: Any) -> None:
        check_model(model)
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        for head in self.heads:
            if head.layer >= n_layers or head.head >= n_heads:
                raise ValueError(
                    f"{head} is outside the model ({n_layers} layers × {n_heads} heads)"
                )

    def hooks(
        self,
        model: Any,
        traces: Trace | Sequence[Trace],
        *,
        width: int | None = None,
        offset: int = 0,
        left_pad: Sequence[int] | None = None,
    ) -> list[Hook]:
        """Forward hooks for ``model.run_with_hooks``; row i of the batch is ``traces[i]``.

        ``width`` is the padded batch length (default: the longest trace). ``offset``: the
        hooked run covers columns ``offset, offset + 1, ...`` of the batch, as in a
        KV-cached generation step (see :mod:`reasoning_circuits.generation`). Positions that
        the source or the means do not cover are refused when a run reaches them.

        ``left_pad``: for a left-padded batch, the number of pad columns before each row's
        trace: column ``c`` of row ``r`` holds position ``c - left_pad[r]`` of ``traces[r]``
        (``width`` and ``offset`` then count columns; ``width`` defaults to the longest
        ``len(trace) + left_pad``). Pad columns are never written, and a knockout maps its
        query and its key columns per row. ``None``: no left padding (column = position).
        """
        trace_list = as_traces(traces)
        self._check_heads(model)
        pads = _check_left_pad(left_pad, len(trace_list))
        width = width or max(len(t) + int(p) for t, p in zip(trace_list, pads.tolist()))
        by_layer: dict[int, list[Head]] = {}
        for head in self.heads:
            by_layer.setdefault(head.layer, []).append(head)
        if self.action == "knockout":
            return self._knockout_hooks(trace_list, width, offset, by_layer, pads)
        mask = _to_columns(position_mask(trace_list, self.positions, width), pads, False)
        writer = self._writer(trace_list, mask, width, pads)
        hooks: list[Hook] = []
        state: dict[str, Tensor] = {}
        if isinstance(self.means, HeadMeans) and self.means.by == "token":

            def record_ids(ids: Tensor, *, hook: Any) -> None:
                state["ids"] = ids

            hooks.append(("embed.hook_in", record_ids))
        hooks += [
            (act_name("z", layer), self._hook(heads, mask, offset, writer, state))
            for layer, heads in by_layer.items()
        ]
        return hooks

    # -- what each action writes: fn(head, current [batch, pos, d_head], run, state) -> new
    def _writer(
        self, traces: list[Trace], mask: Tensor, width: int, pads: Tensor
    ) -> Callable[[Head, Tensor, slice, dict[str, Tensor]], Tensor]:
        if self.action == "zero":
            return lambda head, current, run, state: torch.zeros_like(current)
        if self.action == "scale":
            assert self.scale is not None
            factor = self.scale
            return lambda head, current, run, state: current * factor
        if self.action in ("patch", "resample"):
            return self._patch_writer(traces, mask, width, pads)
        return self._mean_writer(traces, mask, width, pads)

    def _patch_writer(
        self, traces: list[Trace], mask: Tensor, width: int, pads: Tensor
    ) -> Callable[[Head, Tensor, slice, dict[str, Tensor]], Tensor]:
        assert self.source is not None
        source = self.source
        rows = source.rows_for(traces)
        index = torch.zeros(len(traces), width, dtype=torch.long)  # source position
        for r, (trace, row) in enumerate(zip(traces, rows)):
            other = source.traces[row]
            if self.align == "absolute":
                where = torch.arange(len(trace))
                index[r, : len(trace)] = torch.where(where < len(other), where, -1)
                continue
            kinds, offsets = _segment_frame(trace)
            starts = [other[name].start for name in SEGMENT_NAMES]
            lengths = [len(other[name]) for name in SEGMENT_NAMES]
            index[r, : len(trace)] = torch.tensor(
                [
                    starts[k] + i if i < lengths[k] else -1
                    for k, i in zip(kinds, offsets, strict=True)
                ],
                dtype=torch.long,
            )
        index = _to_columns(index, pads, -1)  # pad columns have no source position

        def explain(r: int, p: int) -> str:
            trace, row = traces[r], rows[r]
            other = source.traces[row]
            where = describe_trace(trace, r)
            there = describe_trace(other, row).replace("trace", "source trace", 1)
            if self.align == "absolute":
                return (
                    f"{self.action}: position {p} of {where} is past the end of {there}; "
                    "use a source at least as long, restrict positions=, or align by segment"
                )
            kinds, offsets = _segment_frame(trace)
            name = SEGMENT_NAMES[kinds[p]]
            return (
                f"{self.action}: {name} offset {offsets[p]} (position {p}) of {where} has no "
                f"counterpart in {there}: its {name} has {len(other[name])} tokens, the "
                f"target's {len(trace[name])}. Use a source whose {name} is at least as long, "
                "restrict positions= to offsets it has (during generation: lower "
                "max_new_tokens or pass stop=), or align='absolute' for equal-length pairs"
            )

        row_index = torch.tensor(rows)

        def write(head: Head, current: Tensor, run: slice, state: dict[str, Tensor]) -> Tensor:
            wanted, where = index[:, run], mask[:, run]
            bad = (wanted < 0) & where
            if bad.any():
                r, c = (int(x) for x in bad.nonzero()[0])
                raise PairAlignmentError(explain(r, c + run.start - int(pads[r])))
            values = source.values[head][row_index[:, None], wanted.clamp(min=0)]
            return values.to(current)

        return write

    def _mean_writer(
        self, traces: list[Trace], mask: Tensor, width: int, pads: Tensor
    ) -> Callable[[Head, Tensor, slice, dict[str, Tensor]], Tensor]:
        assert self.means is not None
        means = self.means
        if not isinstance(means, HeadMeans) or means.by == "pooled":
            pooled = means.pooled if isinstance(means, HeadMeans) else means
            return lambda head, current, run, state: pooled[head].to(current).expand_as(current)
        segment = str(means.positions)
        inside = _to_columns(position_mask(traces, segment, width), pads, False)
        outside = mask & ~inside
        if outside.any():
            r, c = (int(x) for x in outside.nonzero()[0])
            raise ValueError(
                f"the means are per {means.by.replace('_', ' ')} of {segment!r}, but the "
                f"intervention's positions include position {c - int(pads[r])} of "
                f"{describe_trace(traces[r], r)}, outside that segment; restrict positions= "
                f"to {segment!r} or compute means for the other positions"
            )
        starts = torch.tensor([t[segment].start for t in traces]) + pads  # in columns
        offsets = torch.arange(width)[None, :] - starts[:, None]  # [batch, width]

        def write(head: Head, current: Tensor, run: slice, state: dict[str, Tensor]) -> Tensor:
            where = mask[:, run].to(current.device)
            if means.by == "segment_offset":
                rows = offsets[:, run].to(current.device)
                rows = torch.where(rows < len(means.counts), rows, -1)
                what = "offset"
            else:
                if "ids" not in state:
                    raise RuntimeError(
                        "by='token' means need the input ids, but embed.hook_in did not fire "
                        "before the attention; run the model on token ids"
                    )
                rows = means.rows_of_tokens(state["ids"].to(current.device))
                what = "token"
            missing = (rows < 0) & where
            if missing.any() and means.fallback == "refuse":
                r, p = (int(x) for x in missing.nonzero()[0])
                column = p + run.start
                position = column - int(pads[r])
                detail = (
                    f"{segment} offset {column - int(starts[r])}; the reference traces' "
                    f"{segment} has at most {len(means.counts)} tokens"
                    if what == "offset"
                    else f"token id {int(state['ids'][r, p])}, which the reference traces' "
                    f"{segment} never holds"
                )
                raise ValueError(
                    f"mean ablation at position {position} of {describe_trace(traces[r], r)}: "
                    f"no mean for {detail}. Use more (or longer) reference traces, restrict "
                    "positions= (during generation: lower max_new_tokens or pass stop=), or "
                    "compute the means with fallback='pooled'"
                )
            table = means.values[head].to(current)
            new = table[rows.clamp(min=0)]
            fallback = means.pooled[head].to(current)
            return torch.where((rows < 0)[..., None], fallback, new)

        return write

    def _hook(
        self,
        heads: list[Head],
        mask: Tensor,
        offset: int,
        writer: Callable[[Head, Tensor, slice, dict[str, Tensor]], Tensor],
        state: dict[str, Tensor],
    ) -> Callable[..., Tensor]:
        def hook_fn(z: Float[Tensor, "batch pos head d_head"], *, hook: Any) -> Tensor:
            run = slice(offset, offset + z.shape[1])
            where = mask[:, run].to(z.device)
            z = z.clone()
            for head in heads:
                current = z[:, :, head.head]
                new = writer(head, current, run, state)
                z[:, :, head.head] = torch.where(where[..., None], new, current)
            return z

        return hook_fn

    def _knockout_hooks(
        self,
        traces: list[Trace],
        width: int,
        offset: int,
        by_layer: dict[int, list[Head]],
        pads: Tensor,
    ) -> list[Hook]:
        rows, keys, empty = self._knockout_masks(traces, width, pads, stacklevel=4)
        hooks: list[Hook] = []
        for layer, heads in by_layer.items():
            hooks.append((act_name("attn_scores", layer), self._block(heads, rows, keys, offset)))
            if empty.any():
                hooks.append((act_name("pattern", layer), self._silence(heads, empty, offset)))
        return hooks

    def _knockout_masks(
        self, traces: list[Trace], width: int, pads: Tensor, *, stacklevel: int
    ) -> tuple[Bool[Tensor, "batch col"], Bool[Tensor, "batch col"], Bool[Tensor, "batch col"]]:
        """The knockout's query rows, blocked keys and rows left with no visible key, as
        ``[batch, width]`` column masks, warning when a row is left with no key (shared by
        the hook path and the fast path of :mod:`reasoning_circuits._fast_knockout`)."""
        assert self.query is not None and self.key is not None
        rows = position_mask(traces, self.query, width)
        keys = position_mask(traces, self.key, width)
        # a row with every visible key (0..q) blocked has nothing left to read (found in
        # trace positions, where the pad columns cannot interrupt the run of blocked keys)
        empty = _to_columns(rows & keys.long().cumprod(dim=1).bool(), pads, False)
        # a row's shift moves its queries and keys alike, so causality holds in columns too
        rows, keys = _to_columns(rows, pads, False), _to_columns(keys, pads, False)
        if empty.any():
            where = [
                f"{describe_trace(t, r)}: {int(empty[r].sum())}"
                for r, t in enumerate(traces)
                if empty[r].any()
            ]
            warnings.warn(
                f"knockout {self.query!r} → {self.key!r}: {int(empty.sum())} query rows have "
                f"every key they can see in {self.key!r} ({'; '.join(where)}); the head reads "
                "nothing there, so its output at those rows is zero",
                UserWarning,
                stacklevel=stacklevel,
            )
        return rows, keys, empty

    def _fast_edits(
        self, model: Any, traces: Trace | Sequence[Trace], *, width: int | None = None
    ) -> dict[int, list[_fast_knockout.Edit]]:
        """This knockout as the per-layer edits of the fast path
        (:mod:`reasoning_circuits._fast_knockout`) for right-padded ``traces`` (row i =
        ``traces[i]``) of ``width`` columns. Refused for any other action."""
        if self.action != "knockout":
            raise ValueError(
                f"method='fast' runs only attention knockouts, not action={self.action!r}; "
                "use method='pattern'"
            )
        trace_list = as_traces(traces)
        self._check_heads(model)
        width = width or max(map(len, trace_list))
        pads = torch.zeros(len(trace_list), dtype=torch.long)
        rows, keys, _ = self._knockout_masks(trace_list, width, pads, stacklevel=5)
        by_layer: dict[int, list[int]] = {}
        for head in self.heads:
            by_layer.setdefault(head.layer, []).append(head.head)
        return _fast_knockout.edits_from_masks(rows, keys, by_layer)

    @staticmethod
    def _block(heads: list[Head], rows: Tensor, keys: Tensor, offset: int) -> Callable[..., Tensor]:
        """Blocks ``keys`` columns for ``rows`` columns (both ``[batch, width]``), building
        only the ``[batch, query, key]`` block of the run at hand (one row per cached step)."""

        def hook_fn(scores: Float[Tensor, "batch head query key"], *, hook: Any) -> Tensor:
            n_queries, n_keys = scores.shape[-2:]
            querying = rows[:, offset : offset + n_queries].to(scores.device)
            keyed = keys[:, :n_keys].to(scores.device)
            where = querying[:, :, None] & keyed[:, None, :]  # [batch, query, key]
            # the causal mask, re-applied whatever the model did before this hook
            query_pos = torch.arange(offset, offset + n_queries, device=scores.device)
            future = torch.arange(n_keys, device=scores.device)[None, :] > query_pos[:, None]
            where = where | future
            scores = scores.clone()
            floor = torch.finfo(scores.dtype).min
            for head in heads:
                scores[:, head.head] = scores[:, head.head].masked_fill(where, floor)
            return scores

        return hook_fn

    @staticmethod
    def _silence(heads: list[Head], empty: Tensor, offset: int) -> Callable[..., Tensor]:
        def hook_fn(pattern: Float[Tensor, "batch head query key"], *, hook: Any) -> Tensor:
            queries = pattern.shape[-2]
            rows = empty[:, offset : offset + queries].to(pattern.device)
            pattern = pattern.clone()
            for head in heads:
                pattern[:, head.head] = pattern[:, head.head].masked_fill(rows[..., None], 0.0)
            return pattern

        return hook_fn

    def effect(
        self,
        model: Any,
        traces: Trace | Sequence[Trace],
        metric: TraceMetric | None = None,
        *,
        batch_size: int = 8,
        confidence: float = 0.95,
        progress: bool | None = None,
        seed: int = 0,
        method: AttentionMethod = "auto",
    ) -> Effect:
        """``rc.measure_effect(model, traces, self, metric, ...)``: the metric per trace without
        and with this intervention, the mean change and its interval (see
        :mod:`reasoning_circuits.effects`). ``method``: ``"pattern"``, ``"fast"`` (knockouts
        only, no ``[T × T]`` matrix) or ``"auto"``, passed to the metric."""
        return measure_effect(
            model,
            traces,
            self,
            metric,
            batch_size=batch_size,
            confidence=confidence,
            progress=progress,
            seed=seed,
            method=method,
        )

    @contextmanager
    def apply(
        self, model: Any, traces: Trace | Sequence[Trace], *, width: int | None = None
    ) -> Iterator[Any]:
        """Within the block, every forward of ``model`` carries the intervention."""
        handles = [
            model.hook_dict[name].add_hook(fn, dir="fwd", is_permanent=True)
            for name, fn in self.hooks(model, traces, width=width)
        ]
        try:
            yield model
        finally:
            for handle in handles:
                handle.hook.remove()
            for point in model.hook_dict.values():
                point.fwd_hooks = [h for h in point.fwd_hooks if h not in handles]
