"""Look at the data before training: dataset tables, box statistics and example images.

Everything reads the cache (`data.read_index`, `data.open_images`): tables come from the index.
Figure functions return a pyplot-free matplotlib `Figure`; show it in a notebook with
`display(fig)` or save it with `fig.savefig`. Pixel intensities and their scalings live in
`pneumolib.data.intensities`.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pneumolib.base.plots import class_colour, figure_grid

TARGET_NAMES = {0: "negative", 1: "positive"}
AGE_BINS = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, np.inf]
AGE_LABELS = ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+"]


# --- tables ------------------------------------------------------------------------------


def _boxes(index: pd.DataFrame) -> list[list[list[float]]]:
    """The boxes column as lists (read_index parses them; a raw index.csv holds JSON)."""
    return [json.loads(b) if isinstance(b, str) else list(b) for b in index["boxes"]]


def _by_target(index: pd.DataFrame, column: pd.Series | str) -> pd.DataFrame:
    """Counts per value of `column` x target, with total and positive rate."""
    values = index[column] if isinstance(column, str) else column
    target = index["target"].map(TARGET_NAMES)
    table = pd.crosstab(values, target).reindex(columns=["negative", "positive"], fill_value=0)
    table["total"] = table.sum(axis=1)
    table["positive_rate"] = (table["positive"] / table["total"]).round(3)
    table.columns.name = None
    return table


def dataset_overview(index: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables of the cache index (one row per patient) -> {name: DataFrame}.

    class_balance (target counts and shares), classes (detailed class counts), view_target,
    sex_target, age_target (10-year bins; missing ages left out), age_summary (age statistics
    per target), split_target, boxes_per_patient (among positives).
    """
    n = len(index)
    target = index["target"].map(TARGET_NAMES)
    balance = target.value_counts().reindex(["negative", "positive"], fill_value=0)
    classes = index["class"].fillna("unknown").replace("", "unknown").value_counts()
    age = pd.to_numeric(index["age"], errors="coerce")
    n_boxes = pd.Series([len(b) for b in _boxes(index)], index=index.index)
    per_patient = n_boxes[index["target"] == 1].value_counts().sort_index()
    return {
        "class_balance": pd.DataFrame({"count": balance, "fraction": (balance / n).round(3)}),
        "classes": pd.DataFrame({"count": classes, "fraction": (classes / n).round(3)}),
        "view_target": _by_target(index, index["view"].fillna("unknown")),
        "sex_target": _by_target(index, index["sex"].fillna("unknown")),
        "age_target": _by_target(
            index, pd.cut(age, AGE_BINS, right=False, labels=AGE_LABELS).rename("age")
        ),
        "age_summary": age.groupby(target).describe().round(1),
        "split_target": _by_target(index, "split").reindex(
            [s for s in ("train", "val", "test") if s in set(index["split"])]
        ),
        "boxes_per_patient": per_patient.rename_axis("boxes").to_frame("patients"),
    }


# --- figures (pyplot-free) ---------------------------------------------------------------


def _stacked_bars(ax, table: pd.DataFrame, title: str) -> None:
    """negative/positive stacked bars of a _by_target table, positive rate written on top."""
    x = np.arange(len(table))
    ax.bar(x, table["negative"], label="negative", color=class_colour("negative"))
    pos = table["positive"]
    ax.bar(x, pos, bottom=table["negative"], label="positive", color=class_colour("positive"))
    for i, (total, rate) in enumerate(zip(table["total"], table["positive_rate"], strict=True)):
        ax.text(i, total, f"{rate:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [str(v) for v in table.index])
    ax.set(title=title, ylabel="patients")
    ax.legend(fontsize=8)


def overview_figure(index: pd.DataFrame) -> Figure:
    """Four bar charts: target, detailed class, view x target, split x target (4 axes)."""
    tables = dataset_overview(index)
    fig, axes = figure_grid(1, 4, (16, 3.8))
    ax = axes[0, 0]
    balance = tables["class_balance"]
    ax.bar(balance.index, balance["count"], color=[class_colour(c) for c in balance.index])
    for i, (c, f) in enumerate(zip(balance["count"], balance["fraction"], strict=True)):
        ax.text(i, c, f"{c:,} ({f:.0%})", ha="center", va="bottom", fontsize=8)
    ax.set(title="target", ylabel="patients")
    ax = axes[0, 1]
    classes = tables["classes"]
    ax.barh(classes.index, classes["count"], color=[class_colour(c) for c in classes.index])
    ax.invert_yaxis()
    ax.set(title="detailed class", xlabel="patients")
    _stacked_bars(axes[0, 2], tables["view_target"], "view position x target")
    _stacked_bars(axes[0, 3], tables["split_target"], "split x target")
    return fig


def demographics_figure(index: pd.DataFrame) -> Figure:
    """Age histogram per target (density) and sex x target bars (2 axes)."""
    fig, axes = figure_grid(1, 2, (11, 3.8))
    ax = axes[0, 0]
    age = pd.to_numeric(index["age"], errors="coerce")
    bins = np.arange(0, 101, 5)
    for t, name in TARGET_NAMES.items():
        a = age[index["target"] == t].dropna().clip(upper=100)
        label, colour = f"{name} (n={len(a):,})", class_colour(name)
        ax.hist(a, bins=bins, density=True, histtype="step", lw=1.8, color=colour, label=label)
    ax.set(xlabel="age, years (over 100 shown at 100)", ylabel="density", title="age")
    ax.legend(fontsize=8)
    _stacked_bars(axes[0, 1], dataset_overview(index)["sex_target"], "sex x target")
    return fig


def box_table(index: pd.DataFrame) -> pd.DataFrame:
    """One row per box: patientId, view, x, y, w, h (cache pixels), area."""
    rows = [
        (pid, view, *b)
        for pid, view, bs in zip(index["patientId"], index["view"], _boxes(index), strict=True)
        for b in bs
    ]
    df = pd.DataFrame(rows, columns=["patientId", "view", "x", "y", "w", "h"])
    df["area"] = df["w"] * df["h"]
    return df


def box_size_figure(index: pd.DataFrame, size: int) -> Figure:
    """Box width x height scatter (per view) and box area histogram, cache pixels (2 axes)."""
    boxes = box_table(index)
    fig, axes = figure_grid(1, 2, (11, 4))
    ax = axes[0, 0]
    for view, group in boxes.groupby(boxes["view"].fillna("unknown")):
        ax.scatter(group["w"], group["h"], s=6, alpha=0.4, label=f"{view} ({len(group):,})")
    lim = min(float(size), 1.1 * float(max(boxes["w"].max(), boxes["h"].max(), 1.0)))
    ax.set(xlim=(0, lim), ylim=(0, lim), aspect="equal", xlabel="width, px", ylabel="height, px")
    ax.set_title(f"{len(boxes):,} boxes ({size} px images)")
    ax.legend(fontsize=8, title="view")
    ax = axes[0, 1]
    ax.hist(100 * boxes["area"] / size**2, bins=30, color=class_colour("positive"), alpha=0.7)
    ax.set(xlabel="box area, % of the image", ylabel="boxes", title="box area")
    return fig


def box_heatmap(index: pd.DataFrame, size: int) -> np.ndarray:
    """How many boxes cover each pixel -> float64 (size, size).

    Boxes are [x, y, w, h] in cache pixels with fractional edges; each pixel receives the
    fraction of it that a box covers, so the map sums to the total box area (clipped to the
    image) exactly.
    """
    heat = np.zeros((size, size), np.float64)
    edges = np.arange(size + 1, dtype=np.float64)
    for bs in _boxes(index):
        for x, y, w, h in bs:
            x0, x1 = max(x, 0.0), min(x + w, float(size))
            y0, y1 = max(y, 0.0), min(y + h, float(size))
            if x1 <= x0 or y1 <= y0:
                continue
            c0, c1 = int(np.floor(x0)), int(np.ceil(x1))
            r0, r1 = int(np.floor(y0)), int(np.ceil(y1))
            # overlap of [x0, x1] with each pixel [j, j + 1]: separable, so an outer product
            cx = np.minimum(edges[c0 + 1 : c1 + 1], x1) - np.maximum(edges[c0:c1], x0)
            cy = np.minimum(edges[r0 + 1 : r1 + 1], y1) - np.maximum(edges[r0:r1], y0)
            heat[r0:r1, c0:c1] += np.outer(cy, cx)
    return heat


def box_heatmap_figure(
    heat: np.ndarray, n_positive: int, background: np.ndarray | None = None
) -> Figure:
    """Share of positive patients with a box over each pixel, optionally over a mean image.

    `heat` from `box_heatmap`; `background` a (S, S) grey image (e.g. the mean positive image).
    One image axis and its colour bar (2 axes).
    """
    fig, axes = figure_grid(1, 1, (5.5, 4.6))
    ax = axes[0, 0]
    if background is not None:
        ax.imshow(background, cmap="gray")
    share = heat / max(n_positive, 1)
    if background is not None:  # pixels no box ever covers stay clear over the background
        share = np.ma.masked_where(heat <= 0, share)
    im = ax.imshow(share, cmap="inferno", alpha=0.65 if background is not None else 1.0)
    fig.colorbar(im, ax=ax, label="boxes per positive patient")
    ax.set_title(f"where the boxes are ({n_positive:,} positive patients)")
    ax.set_axis_off()
    return fig


def class_examples_figure(
    images: np.ndarray, index: pd.DataFrame, per_class: int = 4, seed: int = 0
) -> Figure:
    """Raw cache images (grey levels 0..255, no scaling), `per_class` per detailed class.

    Boxes drawn in red. One row per class, `per_class` columns.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(index["class"].fillna("unknown").unique())
    fig, axes = figure_grid(len(classes), per_class, (2.6 * per_class, 2.8 * len(classes)))
    for r, cls in enumerate(classes):
        group = index[index["class"].fillna("unknown") == cls]
        pick = rng.choice(len(group), size=min(per_class, len(group)), replace=False)
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c >= len(pick):
                continue
            row = group.iloc[pick[c]]
            ax.imshow(images[int(row["row"])], cmap="gray", vmin=0, vmax=255)
            for x, y, w, h in _boxes(group.iloc[[pick[c]]])[0]:
                ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", lw=1.2))
            name = textwrap.fill(cls, 18)  # "No Lung Opacity /\nNot Normal": never cut
            ax.set_title(f"{name}\n{row['view']} {row['sex']} {row['age']}", fontsize=8)
    return fig
