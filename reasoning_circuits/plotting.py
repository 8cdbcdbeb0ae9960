"""Plots people would rather look at than read: layer × head heatmaps.

matplotlib is an optional extra (``pip install reasoning_circuits[plot]``); the functions
raise an ImportError that says so when it is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from reasoning_circuits.heads import Head, as_heads

__all__ = ["plot_head_heatmap"]


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

    ``layers``/``heads`` label the axes (default 0..n-1). Saves to ``path`` when given and
    returns the matplotlib figure.
    """
    plt = _pyplot()
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"values must be [layer, head], got shape {array.shape}")
    layer_ids = list(layers) if layers is not None else list(range(array.shape[0]))
    head_ids = list(heads) if heads is not None else list(range(array.shape[1]))
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * array.shape[1], 1.0 + 0.4 * array.shape[0]))
    image = ax.imshow(array, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(head_ids)), [str(h) for h in head_ids])
    ax.set_yticks(range(len(layer_ids)), [str(layer) for layer in layer_ids])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    for head in as_heads(highlight):
        if head.layer in layer_ids and head.head in head_ids:
            y, x = layer_ids.index(head.layer), head_ids.index(head.head)
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec="red", lw=2))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
