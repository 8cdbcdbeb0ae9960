"""Activation patching sweeps: where in the model is the answer carried?

Run the *corrupted* input (e.g. a problem with one number changed), copy one activation in
from the *clean* run, and measure how much of the clean behaviour comes back (denoising).
Doing that for every head, or for every (layer, position) of the residual stream, maps where
the information that decides the answer lives (R2A §4, Fig. 7).

* :func:`patch_heads`: one patch per head, on ``hook_z`` (the head's output before the
  output projection), at all positions or chosen ones.
* :func:`patch_residual`: one patch per (layer, position), on ``hook_resid_pre``.
* :func:`attribution_patch_heads`: a first-order estimate of every head patch from one
  forward and one backward pass: ``(z_clean - z_corr) · ∂metric/∂z`` at the corrupted run.
  Fast, and only as good as the linear approximation; compare it with the exact sweep
  (:meth:`PatchSweep.rank_correlation`) before trusting it.

The sweeps are batched: each forward pass carries ``batch_size`` copies of the corrupted
input, each copy with a different patch, so many patches cost one pass.

``metric`` maps logits ``[batch, pos, vocab]`` to one value per row ``[batch]``;
:func:`logit_diff_metric` builds the usual one. Clean and corrupted inputs must have the same
length and their positions must correspond (patching position p copies position p).

Caveats: a sweep tells where patching *restores* the clean behaviour, not where it is
*computed*; small models spread it over many heads. The normalised score
``(patched - corrupted) / (clean - corrupted)`` is noise when clean ≈ corrupted
(:meth:`PatchSweep.normalized` returns NaN there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from reasoning_circuits.metrics import normalized_logit_diff
from reasoning_circuits.trace import Trace

__all__ = [
    "PatchSweep",
    "attribution_patch_heads",
    "logit_diff_metric",
    "patch_heads",
    "patch_residual",
]

PatchMetric = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, " batch"]]


def logit_diff_metric(token_a: int, token_b: int, *, position: int = -1) -> PatchMetric:
    """``logits[:, position, a] - logits[:, position, b]`` per row."""

    def metric(logits: Tensor) -> Tensor:
        return logits[:, position, token_a] - logits[:, position, token_b]

    metric.__name__ = f"logit_diff[{position}]({token_a}-{token_b})"
    return metric


@dataclass(frozen=True)
class PatchSweep:
    """Metric values of a patching sweep, labelled.

    ``values`` has one axis per name in ``axes`` (e.g. ``("layer", "head")``); ``labels``
    gives the label of every index on each axis. ``clean`` and ``corrupted`` are the metric
    without any patch on the clean and corrupted inputs.
    """

    values: np.ndarray
    axes: tuple[str, ...]
    labels: dict[str, list[Any]]
    clean: float
    corrupted: float
    metric: str = "metric"
    notes: dict[str, Any] = field(default_factory=dict)

    def normalized(self, *, min_gap: float = 1e-3) -> np.ndarray:
        """``(values - corrupted) / (clean - corrupted)``: 0 no effect, 1 full recovery."""
        return normalized_logit_diff(self.values, self.clean, self.corrupted, min_gap=min_gap)

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per patch with its labels, ``value`` and ``normalized``."""
        index = pd.MultiIndex.from_product([self.labels[a] for a in self.axes], names=self.axes)
        frame = pd.DataFrame({"value": self.values.ravel()}, index=index).reset_index()
        frame["normalized"] = self.normalized().ravel()
        return frame

    def rank_correlation(self, other: PatchSweep) -> float:
        """Spearman correlation of the values of two sweeps over the same patches."""
        if self.values.shape != other.values.shape:
            raise ValueError(f"shapes differ: {self.values.shape} vs {other.values.shape}")
        a = pd.Series(self.values.ravel()).rank().to_numpy()
        b = pd.Series(other.values.ravel()).rank().to_numpy()
        return float(np.corrcoef(a, b)[0, 1])

    def plot(self, path: str | Path | None = None, *, normalized: bool = True) -> Any:
        """A heatmap of the sweep (first axis down, second across); returns the figure."""
        from reasoning_circuits.plotting import _pyplot

        plt = _pyplot()
        data = self.normalized() if normalized else self.values
        rows, cols = self.axes[0], self.axes[1]
        fig, ax = plt.subplots(figsize=(1.5 + 0.4 * data.shape[1], 1.0 + 0.35 * data.shape[0]))
        limit = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
        image = ax.imshow(data, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
        fig.colorbar(image, ax=ax, label="normalised metric" if normalized else self.metric)
        ax.set_xticks(
            range(len(self.labels[cols])), [str(c) for c in self.labels[cols]], rotation=90
        )
        ax.set_yticks(range(len(self.labels[rows])), [str(r) for r in self.labels[rows]])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _tokens(x: Trace | Tensor) -> Int[Tensor, "1 pos"]:
    if isinstance(x, Trace):
        return x.tokens
    tokens = torch.as_tensor(x, dtype=torch.long)
    return tokens[None] if tokens.ndim == 1 else tokens


def _check_pair(clean: Tensor, corrupted: Tensor) -> None:
    if clean.shape != corrupted.shape or clean.shape[0] != 1:
        raise ValueError(
            f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} must be single "
            "sequences of the same length whose positions correspond; build pairs that differ "
            "only in the tokens you change (e.g. one number)"
        )


@torch.no_grad()
def _baselines(
    model: Any, clean: Tensor, corrupted: Tensor, metric: PatchMetric, names: Sequence[str]
) -> tuple[float, float, dict[str, Tensor]]:
    """Metric on clean and corrupted, and the clean activations at ``names``."""
    cache: dict[str, Tensor] = {}

    def keep(tensor: Tensor, *, hook: Any) -> None:
        cache[hook.name] = tensor.detach().clone()

    device = model.cfg.device
    clean_logits = model.run_with_hooks(clean.to(device), fwd_hooks=[(n, keep) for n in names])
    corrupted_logits = model(corrupted.to(device))
    # the hook sees canonical names; map them back to the names we asked for
    by_layer = {int(n.split(".")[1]): n for n in names}
    renamed = {by_layer[int(k.split(".")[1])]: v for k, v in cache.items()}
    return float(metric(clean_logits)[0]), float(metric(corrupted_logits)[0]), renamed


def _sweep(
    model: Any,
    corrupted: Tensor,
    metric: PatchMetric,
    patches: list[tuple[int, int]],
    hook_name: Callable[[int], str],
    setter: Callable[[Tensor, Tensor, Tensor, int], None],
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    """Run ``patches`` ((layer, index) pairs) ``batch_size`` at a time; metric per patch."""
    out = np.empty(len(patches))
    device = model.cfg.device
    starts = range(0, len(patches), batch_size)
    for start in tqdm(starts, desc="patching", disable=not progress):
        chunk = patches[start : start + batch_size]
        layers = sorted({layer for layer, _ in chunk})

        def hook_fn(act: Tensor, *, hook: Any, layer: int, chunk: list[tuple[int, int]]) -> Tensor:
            rows = torch.tensor([i for i, (lay, _) in enumerate(chunk) if lay == layer])
            index = torch.tensor([idx for lay, idx in chunk if lay == layer])
            act = act.clone()
            setter(act, rows, index, layer)
            return act

        hooks = [(hook_name(layer), partial(hook_fn, layer=layer, chunk=chunk)) for layer in layers]
        tokens = corrupted.expand(len(chunk), -1).to(device)
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
            out[start : start + len(chunk)] = metric(logits).float().cpu().numpy()
    return out


def _positions(positions: Sequence[int] | None, n: int) -> list[int]:
    if positions is None:
        return list(range(n))
    chosen = [p % n for p in positions]
    if any(not -n <= p < n for p in positions):
        raise IndexError(f"positions {list(positions)} fall outside a sequence of {n} tokens")
    return chosen


def patch_heads(
    model: Any,
    clean: Trace | Tensor,
    corrupted: Trace | Tensor,
    metric: PatchMetric,
    *,
    positions: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> PatchSweep:
    """Patch each head's clean output into the corrupted run; ``values[layer, head]``.

    ``positions``: patch only these positions (default: all, as TransformerLens'
    ``get_act_patch_attn_head_out_all_pos``).
    """
    clean_t, corr_t = _tokens(clean), _tokens(corrupted)
    _check_pair(clean_t, corr_t)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    clean_value, corr_value, cache = _baselines(model, clean_t, corr_t, metric, names)
    where = torch.tensor(_positions(positions, clean_t.shape[1]))

    def setter(z: Tensor, rows: Tensor, heads: Tensor, layer: int) -> None:
        source = cache[names[layer]][0].to(z)  # [pos, head, d_head]
        for row, head in zip(rows.tolist(), heads.tolist()):
            z[row, where, head] = source[where, head]

    patches = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    values = _sweep(
        model,
        corr_t,
        metric,
        patches,
        lambda layer: names[layer],
        setter,
        batch_size,
        progress,
    )
    return PatchSweep(
        values.reshape(n_layers, n_heads),
        ("layer", "head"),
        {"layer": list(range(n_layers)), "head": list(range(n_heads))},
        clean_value,
        corr_value,
        getattr(metric, "__name__", "metric"),
    )


def patch_residual(
    model: Any,
    clean: Trace | Tensor,
    corrupted: Trace | Tensor,
    metric: PatchMetric,
    *,
    positions: Sequence[int] | None = None,
    position_labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> PatchSweep:
    """Patch the clean residual stream at one (layer, position) at a time; ``values[layer, pos]``.

    ``positions`` defaults to all; ``position_labels`` names them on the plot (e.g. the
    tokens, or "</think>"). ``layers`` defaults to all.
    """
    clean_t, corr_t = _tokens(clean), _tokens(corrupted)
    _check_pair(clean_t, corr_t)
    n_layers = int(model.cfg.n_layers)
    chosen_layers = list(layers) if layers is not None else list(range(n_layers))
    chosen_pos = _positions(positions, clean_t.shape[1])
    names = {layer: f"blocks.{layer}.hook_resid_pre" for layer in chosen_layers}
    clean_value, corr_value, cache = _baselines(
        model, clean_t, corr_t, metric, list(names.values())
    )

    def setter(resid: Tensor, rows: Tensor, pos: Tensor, layer: int) -> None:
        source = cache[names[layer]][0].to(resid)  # [pos, d_model]
        resid[rows, pos] = source[pos]

    patches = [(layer, pos) for layer in chosen_layers for pos in chosen_pos]
    values = _sweep(
        model,
        corr_t,
        metric,
        patches,
        lambda layer: names[layer],
        setter,
        batch_size,
        progress,
    )
    labels = list(position_labels) if position_labels is not None else chosen_pos
    if len(labels) != len(chosen_pos):
        raise ValueError(f"{len(labels)} position labels for {len(chosen_pos)} positions")
    return PatchSweep(
        values.reshape(len(chosen_layers), len(chosen_pos)),
        ("layer", "position"),
        {"layer": chosen_layers, "position": labels},
        clean_value,
        corr_value,
        getattr(metric, "__name__", "metric"),
    )


def attribution_patch_heads(
    model: Any, clean: Trace | Tensor, corrupted: Trace | Tensor, metric: PatchMetric
) -> PatchSweep:
    """First-order estimate of :func:`patch_heads` (all positions) from one backward pass.

    ``values[layer, head] ≈ corrupted + Σ_{pos, d} (z_clean - z_corr) · ∂metric/∂z_corr``.
    """
    clean_t, corr_t = _tokens(clean), _tokens(corrupted)
    _check_pair(clean_t, corr_t)
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    clean_value, _, clean_cache = _baselines(model, clean_t, corr_t, metric, names)
    corr_acts: dict[int, Tensor] = {}

    def keep(z: Tensor, *, hook: Any) -> Tensor:
        z.retain_grad()
        corr_acts[int(hook.name.split(".")[1])] = z
        return z

    with torch.enable_grad():
        logits = model.run_with_hooks(
            corr_t.to(model.cfg.device), fwd_hooks=[(n, keep) for n in names]
        )
        value = metric(logits)[0]
        value.backward()
    rows = []
    for layer in range(n_layers):
        z = corr_acts[layer]
        assert z.grad is not None
        delta = clean_cache[names[layer]].to(z) - z.detach()
        rows.append((delta * z.grad).sum(dim=(0, 1, 3)).cpu().numpy())
    model.zero_grad(set_to_none=True)
    estimate = float(value.detach()) + np.stack(rows)
    n_heads = estimate.shape[1]
    return PatchSweep(
        estimate,
        ("layer", "head"),
        {"layer": list(range(n_layers)), "head": list(range(n_heads))},
        clean_value,
        float(value.detach()),
        getattr(metric, "__name__", "metric"),
        notes={"method": "attribution (first order)"},
    )
