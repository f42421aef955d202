"""The figures of a sweep: the batch size x learning rate heat map, slices along each axis, and
every trial's learning curves. Each returns a matplotlib Figure (no pyplot state)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from pneumolib.base.plots import figure_axes
from pneumolib.tune.results import lr_axis, trial_histories

# A study, {run: history}, or a study folder (its run folders' metrics.csv).
CurveSource = optuna.Study | Mapping[str, pd.DataFrame] | str | Path


def _batch_size_axis(ax: Axes, sizes: Iterable, which: str = "x") -> None:
    """Make the `which` ("x"/"y") axis of `ax` a log2 batch-size axis ticked at the batch sizes
    themselves, as plain integers (16, 32, 64; not 2x10^1)."""
    sizes = sorted({int(s) for s in sizes if pd.notna(s)})
    getattr(ax, f"set_{which}scale")("log", base=2)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_ticks(sizes, [str(s) for s in sizes])
    axis.set_minor_locator(NullLocator())


def plot_heatmap(
    table: pd.DataFrame, metric: str = "val_accuracy", ax: Axes | None = None
) -> Figure:
    """Batch size (rows) x learning rate (columns) coloured and labelled by `metric`; a
    scatter on log axes when the lr is not on a grid (random/TPE). Missing cells are blank."""
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the table: {list(table.columns)}")
    lr_col = lr_axis(table)
    if table[lr_col].nunique() > 12:  # continuous lr: no grid to draw
        fig, ax = figure_axes(ax, (5.5, 4))
        pts = ax.scatter(table[lr_col], table["batch_size"], c=table[metric], cmap="viridis", s=60)
        ax.set(xscale="log", xlabel=lr_col, ylabel="batch size")
        _batch_size_axis(ax, table["batch_size"], "y")
        fig.colorbar(pts, ax=ax, label=metric)
        ax.set_title(f"{metric} by batch size and {lr_col}")
        return fig
    grid = table.pivot_table(index="batch_size", columns=lr_col, values=metric, aggfunc="mean")
    values = grid.to_numpy(float)
    fig, ax = figure_axes(ax, (2.2 + 1.2 * values.shape[1], 1.4 + 0.45 * values.shape[0]))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(values.shape[0]), [str(int(v)) for v in grid.index])
    ax.set(xlabel=lr_col, ylabel="batch size", title=f"{metric}")
    finite = values[np.isfinite(values)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="k" if v > mid else "w",
            )
    fig.colorbar(im, ax=ax, label=metric)
    return fig


def plot_slices(table: pd.DataFrame, metric: str = "val_accuracy") -> Figure:
    """`metric` against batch size (one line per lr) and against lr (one line per batch
    size): a flat line is a direction in which the choice does not matter."""
    lr_col = lr_axis(table)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    for lr, g in table.sort_values("batch_size").groupby(lr_col):
        ax1.plot(g["batch_size"], g[metric], "o-", label=f"{lr_col} {lr:g}")
    for bs, g in table.sort_values(lr_col).groupby("batch_size"):
        ax2.plot(g[lr_col], g[metric], "o-", label=f"batch {bs}")
    ax1.set(xlabel="batch size", ylabel=metric, title=f"{metric} along batch size")
    _batch_size_axis(ax1, table["batch_size"])
    ax2.set(xscale="log", xlabel=lr_col, title=f"{metric} along {lr_col}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _histories(source: CurveSource) -> dict[str, pd.DataFrame]:
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, (str, Path)):  # a study folder: its run folders' metrics.csv
        runs = sorted(Path(source).glob("*/metrics.csv"))
        return {p.parent.name: pd.read_csv(p) for p in runs}
    return trial_histories(source)


def _point_order(name: str) -> tuple[float, float]:
    bs = re.search(r"bs(\d+)", name)
    lr = re.search(r"_b?lr([0-9.e+-]+)", name)
    return (float(bs.group(1)) if bs else math.inf, float(lr.group(1)) if lr else math.inf)


def plot_curves(
    source: CurveSource, metrics: Sequence[str] = ("train_loss", "val_loss", "val_auc")
) -> Figure:
    """Learning curves of all trials on one figure, one panel per metric; colour = batch
    size, line style = lr; markers on every epoch up to 30 (so a one-epoch trial shows as a
    point), integer epoch ticks. `source`: a study, {run: history}, or a study folder."""
    hist = _histories(source)
    names = sorted(hist, key=_point_order)
    sizes = sorted({_point_order(n)[0] for n in names})
    lrs = sorted({_point_order(n)[1] for n in names})
    cmap = matplotlib.colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(4.2 * len(metrics), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for name in names:
        bs, lr = _point_order(name)
        color = cmap(sizes.index(bs) / max(1, len(sizes) - 1) * 0.9)
        for ax, m in zip(axes, metrics, strict=True):
            if m in hist[name]:
                h = hist[name]
                marker = "o" if len(h) <= 30 else None
                ls = styles[lrs.index(lr) % 4]
                ax.plot(h["epoch"], h[m], ls=ls, marker=marker, ms=4, color=color, label=name)
    for ax, m in zip(axes, metrics, strict=True):
        ax.set(xlabel="epoch", title=m)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    if names:
        axes[-1].legend(fontsize=6, ncol=2)
    return fig
