"""Plots people would rather look at than read: layer × head heatmaps.

:func:`plot_head_heatmap` draws any ``[layer, head]`` array (a mass, a score, a patching
sweep over heads) with chosen heads boxed; :meth:`PatchSweep.plot
<reasoning_circuits.patching.PatchSweep.plot>` draws a sweep with the same conventions.
Layer 0 is at the bottom. Titles wrap to the figure's width instead of being clipped, and
tick labels are thinned (every k-th kept) and slanted when there are too many to read.

matplotlib is an optional extra (``pip install reasoning_circuits[plot]``); the functions
raise an ImportError that says so when it is missing.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from reasoning_circuits.heads import Head, as_heads

__all__ = ["plot_head_heatmap"]

MAX_TICKS = 40
"""At most this many tick labels per axis; beyond it every k-th label is shown."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib: pip install 'reasoning_circuits[plot]'"
        ) from err
    return plt


def _thinned(n: int, max_ticks: int = MAX_TICKS) -> list[int]:
    """Indices of the tick labels to show: all of them, or every k-th for long axes."""
    step = max(1, math.ceil(n / max_ticks))
    return list(range(0, n, step))


def _set_heatmap_ticks(ax: Any, x_labels: Sequence[Any], y_labels: Sequence[Any]) -> None:
    """Label the columns and rows of an ``imshow`` heatmap so the labels stay readable.

    Long axes show every k-th label (at most :data:`MAX_TICKS`); x labels are slanted when
    they would not fit side by side, and set smaller when there are many.
    """
    xs = [str(label) for label in x_labels]
    ys = [str(label) for label in y_labels]
    shown_x, shown_y = _thinned(len(xs)), _thinned(len(ys))
    small = 8 if len(shown_x) > 16 else None
    width_in = ax.figure.get_size_inches()[0]
    longest = max((len(xs[i]) for i in shown_x), default=1)
    # ~10 characters per inch at the default size; leave a third of the width for margins
    crowded = len(shown_x) * (longest + 1) > 10 * width_in * 2 / 3
    ax.set_xticks(shown_x, [xs[i] for i in shown_x], fontsize=small)
    if crowded:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_yticks(shown_y, [ys[i] for i in shown_y], fontsize=8 if len(shown_y) > 16 else None)


def _set_wrapped_title(ax: Any, title: str) -> None:
    """Title the figure, wrapped until it fits the figure's width (never clipped).

    A figure title (``suptitle``) rather than an axes title: the axes sit off centre beside
    their colour bar, and an axes title as wide as the figure would run off its left edge.
    """
    if not title:
        return
    fig = ax.figure
    text = fig.suptitle(title)
    renderer = fig.canvas.get_renderer()
    room = 0.95 * fig.get_size_inches()[0] * fig.dpi
    width = len(title)
    while width > 10 and text.get_window_extent(renderer).width > room:
        width = int(width * 0.9)
        text.set_text(textwrap.fill(title, width=width))


def plot_head_heatmap(
    values: Float[np.ndarray, "layer head"],
    *,
    title: str = "",
    highlight: Iterable[Head | tuple[int, int]] = (),
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    label: str = "mass",
    path: str | Path | None = None,
) -> Any:
    """Heatmap of a ``[layer, head]`` array with chosen heads boxed in red.

    Args:
        values: ``[layer, head]`` numbers (layer 0 at the bottom).
        title: wrapped to the figure's width when long.
        highlight: heads to box (a :class:`~reasoning_circuits.heads.HeadRanking` works).
        layers, heads: the axes' labels (default ``0..n-1``), e.g. when ``values`` is a
            selection of layers.
        label: the colour bar's label.
        path: save the figure there (PNG at 120 dpi) when given.

    Returns the matplotlib figure.
    """
    plt = _pyplot()
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"values must be [layer, head], got shape {array.shape}")
    layer_ids = list(layers) if layers is not None else list(range(array.shape[0]))
    head_ids = list(heads) if heads is not None else list(range(array.shape[1]))
    if len(layer_ids) != array.shape[0] or len(head_ids) != array.shape[1]:
        raise ValueError(
            f"{len(layer_ids)} layer and {len(head_ids)} head labels for values of shape "
            f"{array.shape}; give one label per row and per column"
        )
    width = max(5.0, 1.6 + 0.45 * array.shape[1])
    height = min(10.0, 1.6 + 0.4 * array.shape[0])
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    image = ax.imshow(array, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label=label)
    _set_heatmap_ticks(ax, head_ids, layer_ids)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    _set_wrapped_title(ax, title)
    for head in as_heads(highlight):
        if head.layer in layer_ids and head.head in head_ids:
            y, x = layer_ids.index(head.layer), head_ids.index(head.head)
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec="red", lw=2))
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
