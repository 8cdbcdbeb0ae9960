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

Inputs. Clean and corrupted share one position frame (patching position p copies position
p): two traces of different lengths are aligned segment by segment with *masked* padding
(:func:`reasoning_circuits.pairs.align_pair`), and a :class:`~reasoning_circuits.pairs.PatchPair`
built with a probe (:func:`reasoning_circuits.pairs.probe_pair`) can be passed directly.
Positions may be given as segment names (``"probe"``, ``"think_close"``) as well as indices.

Speed. A patch at layer l that writes positions ≥ s leaves every layer below l, and every
position before s, exactly as in the corrupted run (the model is causal). So the sweeps
record the corrupted run (once, or again for patches that start much later) and resume it
at layer l for positions ≥ s only, for ``batch_size`` patched copies at once
(``resume=True``, exact; checked against a plain forward when recorded, with a fallback to
full forwards). The saving is largest when clean and corrupted first differ late: about 5×
a per-head TransformerLens sweep on gpt2-small when they differ mid-sequence, 2.5× when
they differ at the first token (docs/performance.md). Positions where the clean and the
corrupted activations are equal, e.g. every position before the first differing token, are
not written: the patch would change nothing there. The metric is computed on logits
``[batch, pos, vocab]``; a metric that reads only the last k positions can say so with a
``last_positions = k`` attribute (:func:`logit_diff_metric` does for negative positions),
and the sweep then unembeds only those.

``metric`` maps logits ``[batch, pos, vocab]`` to one value per row ``[batch]``.

Caveats: a sweep tells where patching *restores* the clean behaviour, not where it is
*computed*; small models spread it over many heads. The normalised score
``(patched - corrupted) / (clean - corrupted)`` is noise when clean ≈ corrupted
(:meth:`PatchSweep.normalized` returns NaN there).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from reasoning_circuits._hooks import act_name, hook_layer
from reasoning_circuits._inputs import check_model, check_traces
from reasoning_circuits._resume import ResumableRun
from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.errors import (
    ContextLengthError,
    FileFormatError,
    PairAlignmentError,
    TraceFormatError,
)
from reasoning_circuits.metrics import normalized_logit_diff
from reasoning_circuits.pairs import PatchPair, PositionSpec, align_pair
from reasoning_circuits.trace import Trace

__all__ = [
    "PatchSweep",
    "attribution_patch_heads",
    "logit_diff_metric",
    "patch_heads",
    "patch_residual",
]

LogitMetric = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, " batch"]]
"""A sweep's metric: logits ``[batch, pos, vocab]`` → one value per row ``[batch]`` (trace
metrics, which run the model themselves, are :data:`reasoning_circuits.metrics.TraceMetric`)."""


def logit_diff_metric(token_a: int, token_b: int, *, position: int = -1) -> LogitMetric:
    """``logits[:, position, a] - logits[:, position, b]`` per row."""

    def metric(logits: Tensor) -> Tensor:
        return logits[:, position, token_a] - logits[:, position, token_b]

    metric.__name__ = f"logit_diff[{position}]({token_a}-{token_b})"
    if position < 0:
        # sweeps then unembed only the last -position positions (see the module docstring)
        metric.last_positions = -position  # type: ignore[attr-defined]
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

    def __repr__(self) -> str:
        shape = " × ".join(f"{len(self.labels[a])} {a}s" for a in self.axes)
        finite = self.values[np.isfinite(self.values)]
        span = f"{finite.min():+.3g}..{finite.max():+.3g}" if finite.size else "all NaN"
        return (
            f"PatchSweep({shape}, {self.metric}: clean {self.clean:+.3g}, corrupted "
            f"{self.corrupted:+.3g}, patched {span})"
        )

    def normalized(self, *, rel_tol: float = 0.05) -> np.ndarray:
        """``(values - corrupted) / (clean - corrupted)``: 0 no effect, 1 full recovery; all
        NaN (with a warning) when ``|clean - corrupted| < rel_tol * max(|clean|,
        |corrupted|, 1)`` (see :func:`~reasoning_circuits.metrics.normalized_logit_diff`)."""
        return normalized_logit_diff(self.values, self.clean, self.corrupted, rel_tol=rel_tol)

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per patch with its labels, ``value`` and ``normalized``."""
        index = pd.MultiIndex.from_product([self.labels[a] for a in self.axes], names=self.axes)
        frame = pd.DataFrame({"value": self.values.ravel()}, index=index).reset_index()
        frame["normalized"] = self.normalized().ravel()
        return frame

    def save(self, path: str | Path) -> Path:
        """Write ``.npz``: ``values`` plus a JSON header with the labels and baselines."""
        header = {
            "axes": list(self.axes),
            "labels": {a: list(self.labels[a]) for a in self.axes},
            "clean": self.clean,
            "corrupted": self.corrupted,
            "metric": self.metric,
            "notes": self.notes,
        }
        return save_npz(path, "PatchSweep", header, {"values": self.values})

    @classmethod
    def load(cls, path: str | Path) -> PatchSweep:
        """Read a sweep written by :meth:`save`."""
        header, arrays = load_npz(path, "PatchSweep")
        shape = tuple(len(header["labels"][a]) for a in header["axes"])
        if arrays["values"].shape != shape:
            raise FileFormatError(
                f"{path}: values have shape {arrays['values'].shape} but the labels say {shape}"
            )
        return cls(
            arrays["values"],
            tuple(header["axes"]),
            header["labels"],
            header["clean"],
            header["corrupted"],
            header["metric"],
            header["notes"],
        )

    def rank_correlation(self, other: PatchSweep) -> float:
        """Spearman correlation of the values of two sweeps over the same patches."""
        if self.values.shape != other.values.shape:
            raise ValueError(f"shapes differ: {self.values.shape} vs {other.values.shape}")
        a = pd.Series(self.values.ravel()).rank().to_numpy()
        b = pd.Series(other.values.ravel()).rank().to_numpy()
        return float(np.corrcoef(a, b)[0, 1])

    def plot(
        self, path: str | Path | None = None, *, normalized: bool = True, title: str | None = None
    ) -> Any:
        """A heatmap of the sweep (first axis up, second across); returns the figure.

        ``normalized``: colour by :meth:`normalized` (0 no effect, 1 full recovery, on a
        symmetric scale) rather than the raw metric. ``title`` defaults to the axes, the
        metric's name and the clean/corrupted baselines; it wraps when long. Long axes show
        every k-th tick label, slanted when crowded. Saves to ``path`` (PNG, 120 dpi) when
        given. NaN cells (e.g. padded positions) stay blank.
        """
        from reasoning_circuits.plotting import _pyplot, _set_heatmap_ticks, _set_wrapped_title

        plt = _pyplot()
        if len(self.axes) != 2:
            raise ValueError(f"plot draws two-axis sweeps; this one has axes {self.axes}")
        data = self.normalized() if normalized else self.values
        rows, cols = self.axes[0], self.axes[1]
        n_rows, n_cols = data.shape
        longest = max((len(str(c)) for c in self.labels[cols]), default=1)
        fig, ax = plt.subplots(
            figsize=(
                min(20.0, max(5.0, 2.5 + 0.3 * min(n_cols, 40))),
                min(16.0, 2.0 + 0.3 * min(n_rows, 40) + 0.06 * min(longest, 30)),
            ),
            layout="constrained",
        )
        finite = np.isfinite(data)
        limit = float(np.nanmax(np.abs(data))) if finite.any() else 1.0
        limit = limit if limit > 0 else 1.0
        image = ax.imshow(data, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
        fig.colorbar(image, ax=ax, label="normalised metric" if normalized else self.metric)
        _set_heatmap_ticks(ax, self.labels[cols], self.labels[rows])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        if title is None:
            title = (
                f"{rows} × {cols} patching: {self.metric} "
                f"(clean {self.clean:.2f}, corrupted {self.corrupted:.2f})"
            )
        _set_wrapped_title(ax, title)
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


PairInput = Trace | Tensor | PatchPair


def _checked_pair(model: Any, clean: PairInput, corrupted: Trace | Tensor | None) -> PatchPair:
    """:func:`_as_pair`, after checking Trace inputs against the model, and checking that the
    aligned pair fits the model's context."""
    check_model(model)
    given = [x for x in (clean, corrupted) if isinstance(x, Trace)]
    if given:
        check_traces(model, given, what="patching")
    pair = _as_pair(clean, corrupted)
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and len(pair) > n_ctx:
        raise ContextLengthError(
            f"the aligned clean/corrupted pair has {len(pair)} positions (with alignment "
            f"padding) but the model's context is {n_ctx}; shorten both traces with "
            "rc.fit_to_context before pairing them"
        )
    d_vocab = int(getattr(model.cfg, "d_vocab", 0) or 0)
    for side, tokens in (("clean", pair.clean_tokens), ("corrupted", pair.corrupted_tokens)):
        if d_vocab and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
            raise TraceFormatError(
                f"the {side} tokens hold ids outside the model's vocabulary [0, {d_vocab})"
            )
    return pair


def _as_pair(clean: PairInput, corrupted: Trace | Tensor | None) -> PatchPair:
    """One position frame for the two inputs (see :mod:`reasoning_circuits.pairs`)."""
    if isinstance(clean, PatchPair):
        if corrupted is not None:
            raise TypeError("pass either a PatchPair as `clean` (and None) or two inputs")
        return clean
    if corrupted is None:
        raise TypeError("`corrupted` is missing; pass the corrupted input or a PatchPair")
    if isinstance(clean, Trace) and isinstance(corrupted, Trace):
        return align_pair(clean, corrupted)
    a = clean.tokens if isinstance(clean, Trace) else torch.as_tensor(clean, dtype=torch.long)
    b = (
        corrupted.tokens
        if isinstance(corrupted, Trace)
        else torch.as_tensor(corrupted, dtype=torch.long)
    )
    a, b = (a[None] if a.ndim == 1 else a), (b[None] if b.ndim == 1 else b)
    if a.shape != b.shape or a.shape[0] != 1:
        raise PairAlignmentError(
            f"clean {tuple(a.shape)} and corrupted {tuple(b.shape)} token tensors must be single "
            "sequences of the same length whose positions correspond. For inputs of different "
            "lengths pass two Traces (or rc.pairs.align_pair(clean, corrupted)): they are "
            "aligned segment by segment with masked padding"
        )
    full = torch.ones_like(a)
    n = a.shape[1]
    return PatchPair(a, b, full, full.clone(), {}, tuple(range(n)), tuple(range(n)))


@dataclass
class _Runs:
    """The two unpatched runs a sweep starts from."""

    pair: PatchPair
    clean_value: float
    corrupted_value: float
    clean: dict[int, Tensor]  # layer -> clean activation at the patched hook, batch dim dropped
    corrupted: dict[int, Tensor]
    corrupted_logits: Tensor


def _mask(pair: PatchPair, side: str, batch: int = 1) -> Tensor | None:
    if not pair.padded:
        return None
    mask = pair.clean_mask if side == "clean" else pair.corrupted_mask
    return mask.expand(batch, -1)


@torch.no_grad()
def _baseline_runs(
    model: Any,
    pair: PatchPair,
    metric: LogitMetric,
    hook_name: Callable[[int], str],
    layers: list[int],
    *,
    with_corrupted: bool = True,
) -> _Runs:
    """Metric and activations at ``hook_name(layer)`` on the clean and the corrupted input."""
    device = model.cfg.device
    acts: dict[str, dict[int, Tensor]] = {"clean": {}, "corrupted": {}}
    values, logits = {}, {}
    sides = [("clean", pair.clean_tokens), ("corrupted", pair.corrupted_tokens)]
    for side, tokens in sides[: 2 if with_corrupted else 1]:

        def keep(tensor: Tensor, *, hook: Any, side: str = side, layer: int = 0) -> None:
            acts[side][layer] = tensor[0].detach().clone()

        hooks = [(hook_name(layer), partial(keep, layer=layer)) for layer in layers]
        mask = _mask(pair, side)
        out = model.run_with_hooks(
            tokens.to(device),
            fwd_hooks=hooks,
            attention_mask=None if mask is None else mask.to(device),
        )
        values[side], logits[side] = float(metric(out)[0]), out
    return _Runs(
        pair,
        values["clean"],
        values.get("corrupted", float("nan")),
        acts["clean"],
        acts["corrupted"],
        logits.get("corrupted", torch.empty(0)),
    )


@dataclass(frozen=True)
class _Patch:
    layer: int
    index: int  # head, or the patched position for residual patches
    positions: Tensor  # aligned positions written: those where clean differs from corrupted

    @property
    def start(self) -> int | None:
        return int(self.positions.min()) if len(self.positions) else None


Writer = Callable[[Tensor, int, _Patch, int], None]


def _sweep(
    model: Any,
    runs: _Runs,
    metric: LogitMetric,
    patches: list[_Patch],
    hook_name: Callable[[int], str],
    write: Writer,
    *,
    batch_size: int,
    progress: bool | None,
    resume: bool,
) -> np.ndarray:
    """Metric for every patch; ``batch_size`` patched copies of the corrupted run per pass.

    A patch that writes nothing new (``positions`` empty) leaves the corrupted run as it is.
    With ``resume``, the others are grouped by their first written position and computed from
    a recording of the corrupted run (:class:`ResumableRun`): only the blocks from the patched
    layer on, and only the positions from the first written one on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.full(len(patches), runs.corrupted_value)
    device = model.cfg.device
    pair = runs.pair
    last = getattr(metric, "last_positions", None)
    groups: dict[int, list[int]] = {}
    for i, patch in enumerate(patches):
        if patch.start is not None:
            groups.setdefault(patch.start if resume else 0, []).append(i)
    chunks = []
    for start, members in sorted(groups.items()):
        members.sort(key=lambda i: patches[i].layer)
        for k in range(0, len(members), batch_size):
            chunks.append((start, members[k : k + batch_size]))
    recording: ResumableRun | None = None
    recorded_at = 0
    length = pair.corrupted_tokens.shape[1]
    n_layers = int(model.cfg.n_layers)
    show = progress if progress is not None else len(chunks) > 10
    for start, chunk in tqdm(chunks, desc="patching", disable=not show):
        # A recording costs about one forward pass; a recording at an earlier start also
        # serves this chunk, at the price of recomputing positions [recorded_at, start).
        # Record anew only when that waste would exceed one forward pass.
        waste = sum(
            (n_layers - patches[i].layer) / n_layers * (start - recorded_at) / length for i in chunk
        )
        if resume and (recording is None or waste > 1.0):
            recording = None  # chunks come sorted by start: free the previous recording first
            recording = ResumableRun.record(
                model,
                pair.corrupted_tokens,
                start,
                runs.corrupted_logits,
                attention_mask=_mask(pair, "corrupted"),
            )
            recorded_at = start
            if recording is None:
                resume = False
                warnings.warn(
                    "this model's blocks could not be resumed from a recorded run; running "
                    "every patch as a full forward pass (exact, slower)",
                    stacklevel=3,
                )
        offset = recorded_at if recording is not None else 0

        def hook_fn(act: Tensor, *, hook: Any, layer: int, rows: list[int], offset: int) -> Tensor:
            act = act.clone()
            for row, i in enumerate(rows):
                if patches[i].layer == layer:
                    write(act, row, patches[i], offset)
            return act

        layers = sorted({patches[i].layer for i in chunk})
        hooks = [
            (hook_name(layer), partial(hook_fn, layer=layer, rows=chunk, offset=offset))
            for layer in layers
        ]
        with torch.no_grad():
            if recording is not None:
                logits = recording.logits(layers[0], len(chunk), fwd_hooks=hooks, last=last)
            else:
                mask = _mask(pair, "corrupted", len(chunk))
                logits = model.run_with_hooks(
                    pair.corrupted_tokens.expand(len(chunk), -1).to(device),
                    fwd_hooks=hooks,
                    attention_mask=None if mask is None else mask.to(device),
                )
            out[chunk] = metric(logits).float().cpu().numpy()
    return out


def patch_heads(
    model: Any,
    clean: PairInput,
    corrupted: Trace | Tensor | None,
    metric: LogitMetric,
    *,
    positions: Sequence[PositionSpec] | PositionSpec | None = None,
    batch_size: int = 16,
    resume: bool = True,
    progress: bool | None = None,
) -> PatchSweep:
    """Patch each head's clean output into the corrupted run; ``values[layer, head]``.

    ``clean``/``corrupted``: two Traces (aligned by segment when their lengths differ), two
    ``[1, pos]`` token tensors of equal length, or a :class:`PatchPair` and ``None``.
    ``positions``: patch only these aligned positions: ints, segment names (``"probe"``,
    ``"answer"``) or Segments; default all, as TransformerLens'
    ``get_act_patch_attn_head_out_all_pos``. Padded positions are never written.
    ``resume``: compute each patch from a recording of the corrupted run (only the layers
    from the patch on and the positions from the first one it changes; exact); ``False``
    runs a full forward per batch. ``progress``: a progress bar (default: when the sweep
    takes more than 10 passes).
    """
    pair = _checked_pair(model, clean, corrupted)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    layers = list(range(n_layers))
    runs = _baseline_runs(model, pair, metric, _hook_z, layers)
    chosen = torch.tensor(pair.resolve(positions), dtype=torch.long)
    chosen = chosen[pair.both_real[chosen]]
    patches = []
    for layer in layers:
        # [pos, head]: where this head's clean output differs from its corrupted one
        differs = (runs.clean[layer][chosen] != runs.corrupted[layer][chosen]).any(-1)
        patches += [_Patch(layer, head, chosen[differs[:, head]]) for head in range(n_heads)]

    def write(z: Tensor, row: int, patch: _Patch, offset: int) -> None:
        source = runs.clean[patch.layer].to(z)  # [pos, head, d_head]
        z[row, patch.positions - offset, patch.index] = source[patch.positions, patch.index]

    values = _sweep(
        model, runs, metric, patches, _hook_z, write,
        batch_size=batch_size, progress=progress, resume=resume,
    )  # fmt: skip
    return PatchSweep(
        values.reshape(n_layers, n_heads),
        ("layer", "head"),
        {"layer": layers, "head": list(range(n_heads))},
        runs.clean_value,
        runs.corrupted_value,
        getattr(metric, "__name__", "metric"),
    )


def _hook_z(layer: int) -> str:
    return act_name("z", layer)


def _hook_resid_pre(layer: int) -> str:
    return act_name("resid_pre", layer)


def _position_labels(model: Any, pair: PatchPair, positions: list[int]) -> list[str]:
    tokenizer = getattr(model, "tokenizer", None)
    labels = []
    for p in positions:
        name = pair.segment_of(p) if pair.segments else "pos"
        token = ""
        if tokenizer is not None and pair.clean_mask[0, p]:
            token = " " + repr(tokenizer.decode([int(pair.clean_tokens[0, p])]))
        labels.append(f"{p} {name}{token}")
    return labels


def patch_residual(
    model: Any,
    clean: PairInput,
    corrupted: Trace | Tensor | None,
    metric: LogitMetric,
    *,
    positions: Sequence[PositionSpec] | PositionSpec | None = None,
    position_labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    resume: bool = True,
    progress: bool | None = None,
) -> PatchSweep:
    """Patch the clean residual stream at one (layer, position) at a time; ``values[layer, pos]``.

    As R2A Fig. 7, on ``hook_resid_pre``. ``positions``: aligned positions as ints (negative
    from the end), segment names (``["probe", "think_close", -1]``) or Segments; default
    all. ``position_labels`` name them on the plot (default: position, segment and token).
    ``layers`` defaults to all. A position that is padding on either side gets NaN; one
    where clean and corrupted agree gets the corrupted value exactly (the patch changes
    nothing). ``resume`` as in :func:`patch_heads`.
    """
    pair = _checked_pair(model, clean, corrupted)
    n_layers = int(model.cfg.n_layers)
    chosen_layers = list(layers) if layers is not None else list(range(n_layers))
    if any(not 0 <= layer < n_layers for layer in chosen_layers):
        raise IndexError(f"layers {chosen_layers} outside the model's 0..{n_layers - 1}")
    chosen_pos = pair.resolve(positions)
    runs = _baseline_runs(model, pair, metric, _hook_resid_pre, chosen_layers)
    real = pair.both_real
    patches = []
    for layer in chosen_layers:
        for p in chosen_pos:
            differs = bool(real[p]) and bool(
                (runs.clean[layer][p] != runs.corrupted[layer][p]).any()
            )
            patches.append(_Patch(layer, p, torch.tensor([p] if differs else [], dtype=torch.long)))

    def write(resid: Tensor, row: int, patch: _Patch, offset: int) -> None:
        resid[row, patch.index - offset] = runs.clean[patch.layer][patch.index].to(resid)

    values = _sweep(
        model, runs, metric, patches, _hook_resid_pre, write,
        batch_size=batch_size, progress=progress, resume=resume,
    )  # fmt: skip
    values = values.reshape(len(chosen_layers), len(chosen_pos))
    values[:, ~real[chosen_pos].numpy()] = np.nan
    labels = (
        list(position_labels)
        if position_labels is not None
        else _position_labels(model, pair, chosen_pos)
    )
    if len(labels) != len(chosen_pos):
        raise ValueError(f"{len(labels)} position labels for {len(chosen_pos)} positions")
    return PatchSweep(
        values,
        ("layer", "position"),
        {"layer": chosen_layers, "position": labels},
        runs.clean_value,
        runs.corrupted_value,
        getattr(metric, "__name__", "metric"),
    )


def attribution_patch_heads(
    model: Any, clean: PairInput, corrupted: Trace | Tensor | None, metric: LogitMetric
) -> PatchSweep:
    """First-order estimate of :func:`patch_heads` (all positions) from one backward pass.

    ``values[layer, head] ≈ corrupted + Σ_{pos, d} (z_clean - z_corr) · ∂metric/∂z_corr``,
    summed over the positions that are real on both sides. Inputs as in :func:`patch_heads`.
    """
    pair = _checked_pair(model, clean, corrupted)
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers))
    # the corrupted run is the differentiated one below
    runs = _baseline_runs(model, pair, metric, _hook_z, layers, with_corrupted=False)
    corr_acts: dict[int, Tensor] = {}

    def keep(z: Tensor, *, hook: Any) -> Tensor:
        z.retain_grad()
        corr_acts[hook_layer(hook)] = z
        return z

    mask = _mask(pair, "corrupted")
    device = model.cfg.device
    with torch.enable_grad():
        logits = model.run_with_hooks(
            pair.corrupted_tokens.to(device),
            fwd_hooks=[(_hook_z(layer), keep) for layer in layers],
            attention_mask=None if mask is None else mask.to(device),
        )
        value = metric(logits)[0]
        value.backward()
    real = pair.both_real.to(device)
    rows = []
    for layer in layers:
        z = corr_acts[layer]
        assert z.grad is not None
        delta = (runs.clean[layer].to(z) - z.detach()[0]) * real[:, None, None]
        rows.append((delta * z.grad[0]).sum(dim=(0, 2)).cpu().numpy())
    model.zero_grad(set_to_none=True)
    estimate = float(value.detach()) + np.stack(rows)
    n_heads = estimate.shape[1]
    return PatchSweep(
        estimate,
        ("layer", "head"),
        {"layer": layers, "head": list(range(n_heads))},
        runs.clean_value,
        float(value.detach()),
        getattr(metric, "__name__", "metric"),
        notes={"method": "attribution (first order)"},
    )
