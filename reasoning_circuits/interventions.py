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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.heads import Head, as_heads
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
        action: ``"zero"``, ``"mean"``, ``"scale"``, ``"patch"``, ``"resample"``, ``"knockout"``.
        positions: where ``zero``/``mean``/``scale``/``patch`` act: a segment name, a
            ``Segment``, token indices, or ``None`` (all positions).
        means: for ``"mean"``: ``{Head: [d_head] tensor}``, from :func:`mean_head_outputs`.
        scale: for ``"scale"``: the factor.
        source: for ``"patch"``/``"resample"``: ``{Head: [batch, pos, d_head] tensor}`` from
            :func:`capture_head_outputs` on the source inputs (row i patches batch row i).
        query, key: for ``"knockout"``: segment names; ``query`` rows lose ``key`` keys.
    """

    heads: tuple[Head, ...]
    action: Action
    positions: Positions = None
    means: dict[Head, Tensor] | None = None
    scale: float = 1.0
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
        scale: float = 1.0,
        source: dict[Head, Tensor] | None = None,
        query: str | None = None,
        key: str | None = None,
    ) -> None:
        chosen = tuple(as_heads(heads))
        if not chosen:
            raise ValueError("heads is empty; name at least one (layer, head)")
        if action not in ("zero", "mean", "scale", "patch", "resample", "knockout"):
            raise ValueError(
                "action must be 'zero', 'mean', 'scale', 'patch', 'resample' or 'knockout', "
                f"got {action!r}"
            )
        needs = {
            "mean": (means, "mean_head_outputs", "means"),
            "patch": (source, "capture_head_outputs", "source"),
            "resample": (source, "capture_head_outputs", "source"),
        }
        if action in needs:
            given, helper, name = needs[action]
            missing = [str(h) for h in chosen if given is None or h not in given]
            if missing:
                raise ValueError(
                    f"action={action!r} needs values for {missing}; compute them with "
                    f"rc.{helper}(model, traces, heads) and pass {name}=..."
                )
        if action == "knockout" and (query is None or key is None):
            raise ValueError(
                "action='knockout' needs query= and key= segment names, e.g. "
                "query='answer', key='reasoning'"
            )
        object.__setattr__(self, "heads", chosen)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "scale", float(scale))
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
        trace_list = [traces] if isinstance(traces, Trace) else list(traces)
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
                (f"blocks.{layer}.attn.hook_attn_scores", self._knockout(heads, blocked, offset))
                for layer, heads in by_layer.items()
            ]
        mask = position_mask(trace_list, self.positions, width)
        return [
            (f"blocks.{layer}.attn.hook_z", self._hook(heads, mask, offset))
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
        traces: Sequence[Trace],
        metric: Callable[..., np.ndarray] | None = None,
        *,
        confidence: float = 0.95,
        n_resamples: int = 2000,
        seed: int = 0,
    ) -> Effect:
        """The metric per trace without and with the intervention, and their difference.

        ``metric(model, traces, intervention_or_None)`` returns one value per trace; the
        default is :func:`reasoning_circuits.metrics.answer_logprob`. The CI of the mean
        difference is a percentile bootstrap over traces (one trace per problem, please).
        """
        from reasoning_circuits.metrics import answer_logprob

        score = metric or answer_logprob
        trace_list = list(traces)
        before = np.asarray(score(model, trace_list, None), dtype=float)
        after = np.asarray(score(model, trace_list, self), dtype=float)
        diff = after - before
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(diff), size=(n_resamples, len(diff)))
        means = diff[draws].mean(1)
        alpha = (1 - confidence) / 2
        return Effect(
            before,
            after,
            float(diff.mean()),
            (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))),
            getattr(score, "__name__", "metric"),
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


@dataclass(frozen=True)
class Effect:
    """Per-trace metric values ``before`` and ``after`` an intervention, and the mean change."""

    before: np.ndarray
    after: np.ndarray
    mean_diff: float
    ci: tuple[float, float]
    metric: str

    @property
    def diff(self) -> np.ndarray:
        """``after - before`` per trace."""
        return self.after - self.before

    def to_frame(self) -> pd.DataFrame:
        """One row per trace: ``trace, before, after, diff``."""
        return pd.DataFrame(
            {
                "trace": np.arange(len(self.before)),
                "before": self.before,
                "after": self.after,
                "diff": self.diff,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Write ``.npz``: ``before`` and ``after`` plus a JSON header."""
        header = {
            "kind": "Effect",
            "mean_diff": self.mean_diff,
            "ci": list(self.ci),
            "metric": self.metric,
        }
        return save_npz(path, header, {"before": self.before, "after": self.after})

    @classmethod
    def load(cls, path: str | Path) -> Effect:
        """Read an effect written by :meth:`save`."""
        header, arrays = load_npz(path)
        if header.get("kind") != "Effect":
            raise ValueError(f"{path} holds a {header.get('kind')!r}, not an Effect")
        low, high = header["ci"]
        return cls(
            arrays["before"], arrays["after"], header["mean_diff"], (low, high), header["metric"]
        )

    def __str__(self) -> str:
        low, high = self.ci
        return (
            f"{self.metric}: {self.before.mean():.4f} → {self.after.mean():.4f} "
            f"(mean change {self.mean_diff:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}], "
            f"n={len(self.before)})"
        )


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
    model: Any, traces: Trace | Sequence[Trace], heads: Iterable[Head | tuple[int, int]]
) -> dict[Head, Float[Tensor, "batch pos d_head"]]:
    """Each head's ``hook_z`` output on ``traces`` (one batch, right-padded with zeros)."""
    trace_list = [traces] if isinstance(traces, Trace) else list(traces)
    chosen = as_heads(heads)
    tokens, valid = pad_traces(trace_list)
    out: dict[Head, Tensor] = {}

    def grab(z: Tensor, *, hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        for h in chosen:
            if h.layer == layer:
                out[h] = (z[:, :, h.head] * valid[..., None].to(z)).detach().cpu()

    model.run_with_hooks(
        tokens.to(model.cfg.device),
        attention_mask=valid.to(model.cfg.device) if len(trace_list) > 1 else None,
        return_type=None,
        fwd_hooks=[
            (f"blocks.{layer}.attn.hook_z", grab) for layer in sorted({h.layer for h in chosen})
        ],
    )
    return out


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
        tokens, valid = pad_traces(batch)
        current["mask"] = position_mask(batch, positions, tokens.shape[1]) & valid.bool()
        count += int(current["mask"].sum())
        model.run_with_hooks(
            tokens.to(model.cfg.device),
            attention_mask=valid.to(model.cfg.device) if len(batch) > 1 else None,
            return_type=None,
            fwd_hooks=[(f"blocks.{layer}.attn.hook_z", grab) for layer in layers],
        )
    if count == 0:
        raise ValueError(f"no positions selected by {positions!r} in the reference traces")
    return {h: s / count for h, s in sums.items()}
