"""Plots are readable: titles fit the figure, crowded tick labels are thinned and slanted."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import reasoning_circuits as rc
from reasoning_circuits.patching import PatchSweep
from reasoning_circuits.plotting import MAX_TICKS

LONG = "DeepSeek-R1-Distill-Qwen-1.5B: answer → reasoning mass over 200 traces (red: top-10)"


def title_fits(fig) -> bool:
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()  # the title's Text; matplotlib has no getter
    width = fig.get_size_inches()[0] * fig.dpi
    return box.x0 >= 0 and box.x1 <= width


def shown(labels) -> list[str]:
    return [label.get_text() for label in labels if label.get_text()]


@pytest.mark.parametrize("shape", [(2, 3), (4, 8), (28, 12)])
def test_head_heatmap_title_is_never_clipped(shape, tmp_path):
    fig = rc.plotting.plot_head_heatmap(np.random.default_rng(0).random(shape), title=LONG)
    assert title_fits(fig)
    assert fig.get_suptitle().replace("\n", " ") == LONG  # wrapped, not cut


def test_head_heatmap_boxes_the_highlighted_heads_and_checks_labels(tmp_path):
    fig = rc.plotting.plot_head_heatmap(
        np.zeros((4, 8)), highlight=[(3, 4), (1, 1)], path=tmp_path / "h.png"
    )
    boxes = [p.get_xy() for p in fig.axes[0].patches]
    assert sorted(boxes) == [(0.5, 0.5), (3.5, 2.5)]  # (head - 0.5, layer - 0.5)
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="one label per row"):
        rc.plotting.plot_head_heatmap(np.zeros((4, 8)), layers=[0, 1])


def sweep(n_layers: int, n_positions: int) -> PatchSweep:
    labels = [f"{p} reasoning 'tok{p}'" for p in range(n_positions)]
    values = np.linspace(-1, 3, n_layers * n_positions).reshape(n_layers, n_positions)
    return PatchSweep(
        values, ("layer", "position"), {"layer": list(range(n_layers)), "position": labels}, 3, -1
    )


def test_sweep_plot_takes_a_title_and_has_a_default():
    assert sweep(4, 5).plot(title="my sweep").get_suptitle() == "my sweep"
    default = sweep(4, 5).plot().get_suptitle().replace("\n", " ")
    assert "layer × position" in default and "clean 3.00" in default


def test_crowded_sweep_ticks_are_thinned_and_slanted():
    fig = sweep(28, 150).plot()
    ax = fig.axes[0]
    xs, ys = shown(ax.get_xticklabels()), shown(ax.get_yticklabels())
    assert len(xs) <= MAX_TICKS and xs[0] == "0 reasoning 'tok0'" and len(ys) == 28
    assert all(label.get_rotation() == 45 for label in ax.get_xticklabels())
    assert title_fits(fig)
    few = sweep(4, 5).plot(title="t").axes[0]
    assert len(shown(few.get_xticklabels())) == 5


def test_normalized_colours_are_symmetric_and_nan_safe():
    s = sweep(2, 3)
    values = s.values.copy()
    values[0, 0] = np.nan
    image = PatchSweep(values, s.axes, s.labels, 3, -1).plot().axes[0].images[0]
    low, high = image.get_clim()
    assert low == -high == -np.nanmax(np.abs((values + 1) / 4))
