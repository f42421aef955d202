"""Pictures of predicted boxes against the experts' boxes, with each outcome told apart at one
IoU threshold, matched as the challenge matches (`boxes.box_outcomes`): an expert box found
(green) or missed (yellow, dashed), a predicted box that hits (cyan) or a false box (red),
each predicted box labelled with its confidence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from pneumolib.evaluate.boxes import BoxesScores, as_boxes, box_outcomes

COLOURS = {"found": "lime", "missed": "yellow", "hit": "cyan", "false": "red"}
LABELS = {
    "found": "expert box found",
    "missed": "expert box missed",
    "hit": "predicted box: hit",
    "false": "predicted box: false",
}


def _draw(ax: Any, box: np.ndarray, kind: str, text: str | None = None) -> None:
    x, y, w, h = box
    style = "--" if kind == "missed" else "-"
    ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=1.5, ls=style, ec=COLOURS[kind]))
    if text:
        ax.text(x, y - 2, text, color=COLOURS[kind], fontsize=7, va="bottom")


def box_outcome_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    truths: Sequence[Any],
    predictions: Sequence[BoxesScores],
    *,
    iou: float = 0.5,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """N images (H, W) with their expert boxes (n_i, 4) and predictions (boxes (m_i, 4),
    confidences (m_i,)), all [x, y, w, h] in the images' pixels, in one figure, `ncols` per
    row, with a legend of the four outcomes at IoU > `iou`."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(3 * ncols, 3 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        gt = as_boxes(truths[i], "truth")
        boxes, scores = predictions[i]
        hit, found = box_outcomes(gt, boxes, scores, iou=iou)
        ax.imshow(images[i], cmap="gray")
        for box, ok in zip(gt, found, strict=True):
            _draw(ax, box, "found" if ok else "missed")
        for box, score, ok in zip(as_boxes(boxes), scores, hit, strict=True):
            _draw(ax, box, "hit" if ok else "false", f"{score:.2f}")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    handles = [Line2D([], [], color=COLOURS[k], ls="--" if k == "missed" else "-") for k in LABELS]
    fig.legend(handles, [f"{v} (IoU > {iou:g})" if k == "hit" else v for k, v in LABELS.items()],
               loc="outside lower center", ncols=4, fontsize=8, frameon=False)  # fmt: skip
    return fig
