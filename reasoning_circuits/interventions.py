"""Head interventions: change what chosen heads write, at chosen positions, and measure it.

A :class:`HeadIntervention` names some heads, an action and where it applies:

* ``"zero"``: the head writes nothing (its ``hook_z`` output is set to 0);
* ``"mean"``: the head writes its mean output over a reference set (see
  :func:`mean_head_outputs`): mean ablation removes what the head says *about this input*
  while keeping its average contribution, so the residual stream stays in distribution;
* ``"scale"``: the head's output is multiplied by ``scale``.

It acts on ``blocks.{layer}.attn.hook_z`` (``[batch, pos, head, d_head]``, one slot per
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

from reasoning_circuits.heads import Head, as_heads
from reasoning_circuits.trace import Segment, Trace

__all__ = ["HeadIntervention", "Positions", "mean_head_outputs", "position_mask"]

Action = Literal["zero", "mean", "scale"]
Positions = str | Segment | Sequence[int] | None
Hook = tuple[str, Callable[..., Any]]


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
        action: ``"zero"``, ``"mean"`` or ``"scale"``.
        positions: a segment name, a ``Segment``, token indices, or ``None`` (all).
        means: for ``"mean"``: ``{Head: [d_head] tensor}``, from :func:`mean_head_outputs`.
        scale: for ``"scale"``: the factor.
    """

    heads: tuple[Head, ...]
    action: Action
    positions: Positions = None
    means: dict[Head, Tensor] | None = None
    scale: float = 1.0

    def __init__(
        self,
        heads: Iterable[Head | tuple[int, int]],
        action: Action,
        *,
        positions: Positions = None,
        means: dict[Head, Tensor] | None = None,
        scale: float = 1.0,
    ) -> None:
        chosen = tuple(as_heads(heads))
        if not chosen:
            raise ValueError("heads is empty; name at least one (layer, head)")
        if action not in ("zero", "mean", "scale"):
            raise ValueError(f"action must be 'zero', 'mean' or 'scale', got {action!r}")
        if action == "mean":
            missing = [str(h) for h in chosen if means is None or h not in means]
            if missing:
                raise ValueError(
                    f"action='mean' needs a mean output for {missing}; compute them with "
                    "rc.mean_head_outputs(model, reference_traces, heads) and pass means=..."
                )
        object.__setattr__(self, "heads", chosen)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "scale", float(scale))

    def hooks(
        self, model: Any, traces: Trace | Sequence[Trace], *, width: int | None = None
    ) -> list[Hook]:
        """Forward hooks for ``model.run_with_hooks``; row i of the batch is ``traces[i]``.

        ``width`` is the padded batch length (default: the longest trace).
        """
        trace_list = [traces] if isinstance(traces, Trace) else list(traces)
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        for head in self.heads:
            if head.layer >= n_layers or head.head >= n_heads:
                raise ValueError(
                    f"{head} is outside the model ({n_layers} layers × {n_heads} heads)"
                )
        mask = position_mask(trace_list, self.positions, width or max(map(len, trace_list)))
        by_layer: dict[int, list[Head]] = {}
        for head in self.heads:
            by_layer.setdefault(head.layer, []).append(head)
        return [
            (f"blocks.{layer}.attn.hook_z", self._hook(heads, mask))
            for layer, heads in by_layer.items()
        ]

    def _hook(self, heads: list[Head], mask: Tensor) -> Callable[..., Tensor]:
        def hook_fn(z: Float[Tensor, "batch pos head d_head"], *, hook: Any) -> Tensor:
            where = mask[:, : z.shape[1]].to(z.device)
            z = z.clone()
            for head in heads:
                current = z[:, :, head.head]
                if self.action == "zero":
                    new = torch.zeros_like(current)
                elif self.action == "mean":
                    assert self.means is not None
                    new = self.means[head].to(current).expand_as(current)
                else:
                    new = current * self.scale
                z[:, :, head.head] = torch.where(where[..., None], new, current)
            return z

        return hook_fn

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


@torch.no_grad()
def mean_head_outputs(
    model: Any,
    traces: Sequence[Trace],
    heads: Iterable[Head | tuple[int, int]],
    *,
    positions: Positions = "answer",
    batch_size: int = 16,
) -> dict[Head, Float[Tensor, " d_head"]]:
    """Each head's mean ``hook_z`` output over the chosen positions of ``traces``.

    Every position counts once (positions of all traces pooled).
    """
    chosen = as_heads(heads)
    sums = {h: torch.zeros(int(model.cfg.d_head)) for h in chosen}
    layers = sorted({h.layer for h in chosen})
    current: dict[str, Tensor] = {}  # the batch's position mask, read by the hook

    def grab(z: Tensor, *, hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        where = current["mask"].to(z.device)
        for h in chosen:
            if h.layer == layer:
                sums[h] += z[:, :, h.head][where].float().sum(0).cpu()

    count = 0
    for start in range(0, len(traces), batch_size):
        batch = list(traces[start : start + batch_size])
        width = max(map(len, batch))
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for row, trace in enumerate(batch):
            tokens[row, : len(trace)] = trace.tokens[0]
        valid = position_mask(batch, None, width)
        current["mask"] = position_mask(batch, positions, width) & valid
        count += int(current["mask"].sum())
        model.run_with_hooks(
            tokens.to(model.cfg.device),
            attention_mask=valid.long().to(model.cfg.device) if len(batch) > 1 else None,
            return_type=None,
            fwd_hooks=[(f"blocks.{layer}.attn.hook_z", grab) for layer in layers],
        )
    if count == 0:
        raise ValueError(f"no positions selected by {positions!r} in the reference traces")
    return {h: s / count for h, s in sums.items()}
