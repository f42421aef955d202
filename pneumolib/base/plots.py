"""Plotting basics every figure shares: the class colours and a pyplot-free figure grid.

No torch and no pyplot state: a notebook shows the Figure, a script saves it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# The one class -> colour mapping of every figure that colours classes (notebooks 01-06):
# pneumonia red, the negatives blue ("Normal") and purple (another finding), unknown grey.
CLASS_COLOURS = {
    "positive": "tab:red",  # target 1
    "negative": "tab:blue",  # target 0
    "Lung Opacity": "tab:red",  # RSNA's detailed classes
    "Normal": "tab:blue",
    "No Lung Opacity / Not Normal": "tab:purple",
    "pneumonia": "tab:red",  # metrics.CLASS_NAMES
    "no pneumonia": "tab:blue",
    "unknown": "tab:gray",
}


def figure_grid(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A pyplot-free constrained-layout Figure of `size` inches and its (nrows, ncols) axes."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def class_colour(name: str | int) -> str:
    """Colour of a class name, a target (0/1) or a metrics class name; grey when unknown."""
    if not isinstance(name, str):
        name = "positive" if int(name) == 1 else "negative"
    return CLASS_COLOURS.get(name, CLASS_COLOURS["unknown"])


def figure_axes(
    ax: Axes | None,
    figsize: tuple[float, float] = (5, 4),
    *,
    layout: Literal["constrained", "compressed", "tight"] | None = "constrained",
) -> tuple[Any, Axes]:
    """(`ax`'s figure, `ax`) to draw into the caller's axes, or a new pyplot-free Figure of
    `figsize` inches and its one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.add_subplot()
