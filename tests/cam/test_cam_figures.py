"""Tests for pneumolib.cam.figures: overlays drawn and written, no pyplot state."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from pneumolib.cam.figures import overlay, overlay_grid, save_overlays


def test_overlay_draws_boxes_and_title():
    image = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    fig = overlay(
        image, np.random.rand(32, 32), boxes=[[1, 2, 10, 10], [30, 30, 5, 5]], title="p=0.9"
    )
    ax = fig.axes[0]
    assert sum(isinstance(p, Rectangle) for p in ax.patches) == 2
    assert ax.get_title() == "p=0.9"
    assert ax.images[1].get_array().shape == (64, 64)  # map resized to the image


def test_save_overlays_and_grid(tmp_path):
    images = np.zeros((3, 32, 32), dtype=np.uint8)
    maps = np.random.rand(3, 32, 32)
    boxes = [[[1, 1, 5, 5]], "[[2, 2, 4, 4]]", [[0, 0, 8, 8]]]
    names, probs = ["a", "b", "c"], [0.1, 0.5, 0.9]
    paths = save_overlays(
        tmp_path / "figs", names, images=images, maps=maps, boxes=boxes, probs=probs
    )
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert not list((tmp_path / "figs").glob("*.tmp"))
    grid = overlay_grid(images, maps, boxes=boxes, titles=["a", "b", "c"], ncols=2)
    assert len(grid.axes) == 4
