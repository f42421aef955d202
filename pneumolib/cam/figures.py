"""Drawing class activation maps: the radiograph in grey, the map in [0, 1] on top, the expert
boxes as rectangles. Maps come from `pneumolib.cam.maps`; drawing is kept apart from computing them.
Figures are pyplot-free `matplotlib.figure.Figure`s, so nothing leaks between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from pneumolib.base.files import atomic_write
from pneumolib.base.plots import figure_axes
from pneumolib.cam.localisation import Boxes, as_numpy, parse_boxes

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def overlay(
    image: np.ndarray | Tensor,
    cam_map: np.ndarray | Tensor,
    *,
    boxes: Boxes | str = (),
    title: str | None = None,
    ax: Axes | None = None,
    cmap: str = "jet",
    alpha: float = 0.4,
) -> Figure:
    """The radiograph (H, W) in grey, the map (h, w) in [0, 1] on top (resized to the image
    when the sizes differ), the expert boxes [x, y, w, h] (image pixels) as green rectangles.
    Draws into `ax` if given, else a new pyplot-free Figure (nothing leaks between calls)."""
    image = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image)
    if isinstance(cam_map, Tensor):
        heat = cam_map.detach().float().cpu()
    else:
        heat = torch.as_tensor(np.asarray(cam_map, dtype=np.float32))
    if image.ndim != 2 or heat.ndim != 2:
        raise ValueError(f"overlay: expected 2-D image and map, got {image.shape}, {heat.shape}")
    if tuple(heat.shape) != image.shape:
        heat = F.interpolate(heat[None, None], size=image.shape, mode="bilinear")[0, 0]
    fig, ax = figure_axes(ax, (4, 4), layout=None)
    ax.imshow(image, cmap="gray")
    ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    for x, y, w, h in parse_boxes(boxes):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.5))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def overlay_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    maps: Tensor | np.ndarray,
    *,
    boxes: Sequence[Boxes | str],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    **kwargs: Any,
) -> Figure:
    """Overlays of N images (H, W) with their maps (N, h, w) in [0, 1] and boxes in one
    figure, `ncols` per row (for notebooks and reports)."""
    maps = as_numpy(maps)
    n = len(maps)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(3 * ncols, 3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        title = titles[i] if titles else None
        overlay(images[i], maps[i], boxes=boxes[i], title=title, ax=ax, **kwargs)
    return fig


def save_overlays(
    out_dir: str | Path,
    names: Sequence[str],
    *,
    images: Sequence[np.ndarray] | np.ndarray,
    maps: Tensor | np.ndarray,
    boxes: Sequence[Boxes | str],
    probs: Sequence[float] | np.ndarray | Tensor | None = None,
    dpi: int = 100,
    **kwargs: Any,
) -> list[Path]:
    """One PNG per image, `out_dir/<name>.png`: images (N, H, W), maps (N, h, w) in [0, 1],
    N box lists, optional probabilities (N,); titled with the name and probability.
    Each file is written under a temporary name and renamed, so none is ever half-written."""
    maps = as_numpy(maps)
    if not (len(names) == len(images) == len(maps) == len(boxes)):
        raise ValueError(
            f"save_overlays: names/images/maps/boxes lengths differ: "
            f"{len(names)}, {len(images)}, {len(maps)}, {len(boxes)}"
        )
    if isinstance(probs, Tensor):
        probs = probs.detach().cpu().numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        title = str(name) if probs is None else f"{name}  p={float(probs[i]):.2f}"
        fig = overlay(images[i], maps[i], boxes=boxes[i], title=title, **kwargs)
        path = out_dir / f"{name}.png"
        atomic_write(path, partial(fig.savefig, format="png", dpi=dpi, bbox_inches="tight"))
        paths.append(path)
    return paths
