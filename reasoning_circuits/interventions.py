"""Head interventions: change what chosen heads write, at chosen positions, and measure it.

A :class:`HeadIntervention` names some heads, an action and where it applies:

* ``"zero"``: the head writes nothing (its ``hook_z`` output is set to 0);
* ``"mean"``: the head writes its mean output over a reference set (see
  :func:`mean_head_outputs`): mean ablation removes what the head says *about this input*
  while keeping its average contribution, so the residual stream stays in distribution;
* ``"scale"``: the head's output is multiplied by ``scale``;
* ``"patch"``: the head writes what it wrote in a *source* run (see
  :func:`capture_head_outputs`), position by position: the clean/corrupted patching of
  activation-patching studies;
* ``"resample"``: the same mechanics, named for resample ablation: the source is the run of
  *another* input (e.g. a different problem), so the head says what it would say there;
* ``"knockout"``: the head cannot attend from the ``query`` segment to the ``key`` segment
  (e.g. answer → reasoning). This edits the pre-softmax scores (``hook_attn_scores``) to the
  dtype's minimum, so the softmax renormalises each row over the keys that remain: exactly
  "the head never saw those keys". A row with no other key left would be undefined; causal
  rows always keep at least themselves unless the key segment contains the query.

The first four act on ``blocks.{layer}.attn.hook_z`` (``[batch, pos, head, d_head]``, one slot per
*query* head, also in grouped-query models), i.e. on what the head writes before the output
projection. Positions are a segment name (``"answer"``), a :class:`Segment`, token indices, or
``None`` for every position; with several traces in a batch each row gets its own positions.

Use it as hooks (``model.run_with_hooks(tokens, fwd_hooks=iv.hooks(model, traces))``) or as
a context manager (``with iv.apply(model, traces): model(tokens)``).

Caveat: an intervention at position p changes every later position through attention; an
intervention on the answer positions leaves the prompt and the reasoning untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from reasoning_circuits._hooks import Hook, act_name, hook_layer
from reasoning_circuits._inputs import as_traces, batches, check_model, check_traces
from reasoning_circuits._options import check_option
from reasoning_circuits.effects import Effect, measure_effect
from reasoning_circuits.heads import Head, as_heads
from reasoning_circuits.metrics import TraceMetric
from reasoning_circuits.trace import Segment, Trace, pad_traces

__all__ = [
    "Effect",
    "HeadIntervention",
    "Positions",
    "capture_head_outputs",
    "mean_head_outputs",
    "position_mask",
]

Action = Literal["zero", "mean", "scale", "patch", "resample", "knockout"]
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


@dataclass(frozen=True)
class HeadIntervention:
    """Heads, an action and where it applies.

    Args:
        heads: ``Head`` objects or ``(layer, head)`` pairs.
        action: ``"zero"``, ``"mean"``, ``"scale"``, ``"patch"``, ``"resample"``, ``"knockout"``.
        positions: where ``zero``/``mean``/``scale``/``patch``/``resample`` act: a segment
            name, a ``Segment``, token indices, or ``None`` (all positions).
        means: for ``"mean"``: ``{Head: [d_head] tensor}``, from :func:`mean_head_outputs`.
        scale: for ``"scale"``: the factor.
        source: for ``"patch"``/``"resample"``: ``{Head: [batch, pos, d_head] tensor}`` from
            :func:`capture_head_outputs` on the source inputs (row i patches batch row i).
        query, key: for ``"knockout"``: segment names; ``query`` rows lose ``key`` keys.

    An argument the action does not use is refused (``ValueError``), not ignored.
    """

    heads: tuple[Head, ...]
    action: Action
    positions: Positions = None
    means: dict[Head, Tensor] | None = None
    scale: float | None = None
    source: dict[Head, Tensor] | None = None
    query: str | None = None
    key: str | None = None

    def __init__(
        self,
        heads: Iterable[Head | tuple[int, int]],
        action: Action,
        *,
        positions: Positions = None,
        means: dict[Head, Tensor] | None = None,
        scale: float | None = None,
        source: dict[Head, Tensor] | None = None,
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
            "query": query is not None,
            "key": key is not None,
        }
        uses = {
            "zero": {"positions"},
            "mean": {"positions", "means"},
            "scale": {"positions", "scale"},
            "patch": {"positions", "source"},
            "resample": {"positions", "source"},
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
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "key", key)

    def hooks(
        self,
        model: Any,
        traces: Trace | Sequence[Trace],
        *,
        width: int | None = None,
        offset: int = 0,
    ) -> list[Hook]:
        """Forward hooks for ``model.run_with_hooks``; row i of the batch is ``traces[i]``.

        ``width`` is the padded batch length (default: the longest trace). ``offset``: the
        hooked run covers positions ``offset, offset + 1, ...`` of the traces, as in a
        KV-cached generation step (see :mod:`reasoning_circuits.generation`).
        """
        trace_list = as_traces(traces)
        check_model(model)
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        for head in self.heads:
            if head.layer >= n_layers or head.head >= n_heads:
                raise ValueError(
                    f"{head} is outside the model ({n_layers} layers × {n_heads} heads)"
                )
        width = width or max(map(len, trace_list))
        by_layer: dict[int, list[Head]] = {}
        for head in self.heads:
            by_layer.setdefault(head.layer, []).append(head)
        if self.action == "knockout":
            assert self.query is not None and self.key is not None
            rows = position_mask(trace_list, self.query, width)
            keys = position_mask(trace_list, self.key, width)
            blocked = rows[:, :, None] & keys[:, None, :]  # [batch, query, key]
            return [
                (act_name("attn_scores", layer), self._knockout(heads, blocked, offset))
                for layer, heads in by_layer.items()
            ]
        mask = position_mask(trace_list, self.positions, width)
        return [
            (act_name("z", layer), self._hook(heads, mask, offset))
            for layer, heads in by_layer.items()
        ]

    def _hook(self, heads: list[Head], mask: Tensor, offset: int) -> Callable[..., Tensor]:
        def hook_fn(z: Float[Tensor, "batch pos head d_head"], *, hook: Any) -> Tensor:
            where = mask[:, offset : offset + z.shape[1]].to(z.device)
            z = z.clone()
            for head in heads:
                current = z[:, :, head.head]
                if self.action == "zero":
                    new = torch.zeros_like(current)
                elif self.action == "mean":
                    assert self.means is not None
                    new = self.means[head].to(current).expand_as(current)
                elif self.action in ("patch", "resample"):
                    assert self.source is not None
                    new = _fit(self.source[head], current, offset)
                else:
                    assert self.scale is not None
                    new = current * self.scale
                z[:, :, head.head] = torch.where(where[..., None], new, current)
            return z

        return hook_fn

    def _knockout(self, heads: list[Head], blocked: Tensor, offset: int) -> Callable[..., Tensor]:
        def hook_fn(scores: Float[Tensor, "batch head query key"], *, hook: Any) -> Tensor:
            queries, keys = scores.shape[-2:]
            where = blocked[:, offset : offset + queries, :keys].to(scores.device)
            scores = scores.clone()
            floor = torch.finfo(scores.dtype).min
            for head in heads:
                scores[:, head.head] = scores[:, head.head].masked_fill(where, floor)
            return scores

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
    ) -> Effect:
        """``rc.measure_effect(model, traces, self, metric, ...)``: the metric per trace without
        and with this intervention, the mean change and its interval (see
        :mod:`reasoning_circuits.effects`)."""
        return measure_effect(
            model,
            traces,
            self,
            metric,
            batch_size=batch_size,
            confidence=confidence,
            progress=progress,
            seed=seed,
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


def _fit(source: Tensor, current: Tensor, offset: int = 0) -> Tensor:
    """The source values for the rows and positions of ``current`` (``[batch, pos, d_head]``,
    covering positions ``offset...``); zeros past the end of the source."""
    batch, width = current.shape[:2]
    width += offset
    if source.shape[0] != batch and source.shape[0] != 1:
        raise ValueError(
            f"the patch source has {source.shape[0]} rows but the batch has {batch}; capture "
            "the source from as many inputs as are patched (or from one, for all of them)"
        )
    if source.shape[1] < width:
        pad = torch.zeros(source.shape[0], width - source.shape[1], source.shape[2])
        source = torch.cat([source, pad.to(source)], dim=1)
    return source[:, offset:width].to(current).expand(batch, -1, -1)


@torch.no_grad()
def capture_head_outputs(
    model: Any,
    traces: Trace | Sequence[Trace],
    heads: Iterable[Head | tuple[int, int] | str],
    *,
    batch_size: int = 8,
    progress: bool | None = None,
) -> dict[Head, Float[Tensor, "batch pos d_head"]]:
    """Each head's ``hook_z`` output on ``traces``: row i is ``traces[i]``, right-padded with
    zeros to the longest trace. ``batch_size`` traces run per forward pass."""
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="capture_head_outputs")
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
    return out


@torch.no_grad()
def mean_head_outputs(
    model: Any,
    traces: Trace | Sequence[Trace],
    heads: Iterable[Head | tuple[int, int] | str],
    *,
    positions: Positions = "answer",
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[Head, Float[Tensor, " d_head"]]:
    """Each head's mean ``hook_z`` output over the chosen positions of ``traces``.

    Every position counts once (positions of all traces pooled).
    """
    trace_list = as_traces(traces)
    check_traces(model, trace_list, what="mean_head_outputs")
    chosen = as_heads(heads)
    sums = {h: torch.zeros(int(model.cfg.d_head)) for h in chosen}
    layers = sorted({h.layer for h in chosen})
    current: dict[str, Tensor] = {}  # the batch's position mask, read by the hook

    def grab(z: Tensor, *, hook: Any) -> None:
        layer = hook_layer(hook)
        where = current["mask"].to(z.device)
        for h in chosen:
            if h.layer == layer:
                sums[h] += z[:, :, h.head][where].float().sum(0).cpu()

    count = 0
    for _, batch in batches(trace_list, batch_size, desc="mean head outputs", progress=progress):
        tokens, valid = pad_traces(batch)
        current["mask"] = position_mask(batch, positions, tokens.shape[1]) & valid.bool()
        count += int(current["mask"].sum())
        model.run_with_hooks(
            tokens.to(model.cfg.device),
            attention_mask=valid.to(model.cfg.device) if len(batch) > 1 else None,
            return_type=None,
            fwd_hooks=[(act_name("z", layer), grab) for layer in layers],
        )
    if count == 0:
        raise ValueError(f"no positions selected by {positions!r} in the reference traces")
    return {h: s / count for h, s in sums.items()}
