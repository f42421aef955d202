"""Look at the data before training: dataset tables, box statistics, intensities and scalings.

Everything reads the cache (`data.read_index`, `data.open_images`): tables come from the index,
pixels from the memory-mapped uint8 (N, S, S) array, always in chunks, so the full RSNA cache
(26,684 x 256 x 256) never has to fit in memory. Figure functions return a pyplot-free
matplotlib `Figure`; show it in a notebook with `display(fig)` or save it with `fig.savefig`.

The five scalings take one uint8 (H, W) image and return float32 (H, W):

| function | output | what it does |
| --- | --- | --- |
| `scale_255` | [0, 1] | x / 255: the fixed map the course uses |
| `scale_minmax` | [0, 1] | per image: darkest pixel -> 0, brightest -> 1 |
| `scale_zscore` | [-mean/std, (1-mean)/std] | (x / 255 - mean) / std with the train stats |
| `scale_percentile` | [0, 1] | per image window [p_lo, p_hi], clipped outside |
| `clahe` | [0, 1] | contrast-limited adaptive histogram equalisation, then / 255 |
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pneumolib.figures import class_colour

TARGET_NAMES = {0: "negative", 1: "positive"}
AGE_BINS = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, np.inf]
AGE_LABELS = ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+"]
SCALING_NAMES = ("/255", "min-max", "z-score", "percentile 1-99", "CLAHE")


# --- scalings: uint8 (H, W) -> float32 (H, W) --------------------------------------------


def _check_image(x: np.ndarray, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 2:
        raise ValueError(f"{name}: expected a uint8 (H, W) image, got {x.dtype} {x.shape}")
    return x


def scale_255(x: np.ndarray) -> np.ndarray:
    """x / 255 -> float32 (H, W) in [0, 1]."""
    return _check_image(x).astype(np.float32) / 255.0


def scale_minmax(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) per image -> float32 (H, W) in [0, 1]; a flat image gives 0."""
    x = _check_image(x).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def scale_zscore(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x / 255 - mean) / std -> float32 (H, W) in [-mean/std, (1 - mean)/std].

    `mean` and `std` are the train-split statistics of pixels in [0, 1] (CACHE/stats.json), the
    normalisation the models see; the result is unbounded in principle but has mean ~0 and
    std ~1 over the train images.
    """
    if not std > 0:
        raise ValueError(f"std: must be positive, got {std}")
    return (_check_image(x).astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)


def scale_percentile(x: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> np.ndarray:
    """Window [p_lo, p_hi] of this image's grey levels -> float32 (H, W) in [0, 1].

    Values below the `lo`-th percentile become 0, above the `hi`-th become 1: a few very dark
    (collimator) or very bright (markers, wires) pixels no longer set the contrast.
    """
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"lo, hi: expected 0 <= lo < hi <= 100, got {lo}, {hi}")
    x = _check_image(x).astype(np.float32)
    p_lo, p_hi = np.percentile(x, [lo, hi])
    return np.clip((x - p_lo) / max(float(p_hi - p_lo), 1e-6), 0.0, 1.0).astype(np.float32)


def clahe(x: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """OpenCV CLAHE (clip limit `clip`, `tiles` x `tiles` grid) / 255 -> float32 (H, W) in [0, 1].

    Equalises the histogram per tile, limited so that noise in flat regions is not amplified
    beyond `clip` times the mean bin: local contrast in the lungs rises.
    """
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles)))
    return op.apply(_check_image(x)).astype(np.float32) / 255.0


def scalings(x: np.ndarray, mean: float, std: float) -> dict[str, np.ndarray]:
    """All five scalings of one uint8 (H, W) image, keyed by SCALING_NAMES."""
    out = (
        scale_255(x),
        scale_minmax(x),
        scale_zscore(x, mean, std),
        scale_percentile(x),
        clahe(x),
    )
    return dict(zip(SCALING_NAMES, out, strict=True))


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


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


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
    fig, axes = _figure(1, 4, (16, 3.8))
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
    fig, axes = _figure(1, 2, (11, 3.8))
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
    fig, axes = _figure(1, 2, (11, 4))
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
    fig, axes = _figure(1, 1, (5.5, 4.6))
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
    fig, axes = _figure(len(classes), per_class, (2.6 * per_class, 2.8 * len(classes)))
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


# --- pixel statistics, in chunks from the memory map ------------------------------------


def _chunks(rows: Sequence[int] | np.ndarray, chunk: int):
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: sequential reads of the map
    for i in range(0, len(rows), chunk):
        yield rows[i : i + chunk]


def intensity_histogram(images: np.ndarray, rows: Sequence[int], chunk: int = 256) -> np.ndarray:
    """Grey-level counts of images[rows] -> int64 (256,), summing to len(rows) * S * S."""
    counts = np.zeros(256, np.int64)
    for part in _chunks(rows, chunk):
        counts += np.bincount(np.asarray(images[part]).ravel(), minlength=256)
    return counts


def mean_image(images: np.ndarray, rows: Sequence[int], chunk: int = 256) -> np.ndarray:
    """Mean of images[rows] (grey levels 0..255) -> float64 (S, S), summed in chunks."""
    if len(rows) == 0:
        raise ValueError("rows: no images to average")
    total = np.zeros(images.shape[1:], np.float64)
    for part in _chunks(rows, chunk):
        total += np.asarray(images[part]).sum(axis=0, dtype=np.float64)
    return total / len(rows)


def _groups(
    index: pd.DataFrame, by: str, max_per_group: int | None, seed: int
) -> dict[str, np.ndarray]:
    """{group value: cache rows}, at most `max_per_group` each (seeded sample)."""
    rng = np.random.default_rng(seed)
    out = {}
    for value, group in index.groupby(index[by].fillna("unknown"), sort=True):
        rows = group["row"].to_numpy()
        if max_per_group is not None and len(rows) > max_per_group:
            rows = rng.choice(rows, size=max_per_group, replace=False)
        out[str(value)] = rows
    return out


def mean_images(
    images: np.ndarray,
    index: pd.DataFrame,
    *,
    by: str = "class",
    max_per_group: int | None = None,
    chunk: int = 256,
) -> dict[str, np.ndarray]:
    """Mean image per value of `by` ("class", "target", "view", ...) -> {value: (S, S)}."""
    groups = _groups(index, by, max_per_group, seed=0)
    return {k: mean_image(images, rows, chunk) for k, rows in groups.items()}


def intensity_histograms_figure(
    images: np.ndarray,
    index: pd.DataFrame,
    *,
    by: str = "class",
    max_per_group: int | None = 500,
    seed: int = 0,
    bins: int | None = None,
) -> Figure:
    """Grey-level distribution per group (pixels, and per-image means) of raw cache images.

    At most `max_per_group` images per group (a seeded sample). The per-image means are step
    histograms with bins shared by all groups and spanning the means' own range (not 0..255,
    where they would fill a handful of bins); `bins=None` gives 2 sqrt(n) of the smallest group,
    10 to 40. Colours: `figures.CLASS_COLOURS`. 2 axes.
    """
    fig, axes = _figure(1, 2, (12, 3.8))
    groups = _groups(index, by, max_per_group, seed)
    counts, means = {}, {}
    for name, rows in groups.items():
        counts[name] = np.zeros(256, np.int64)
        per_image = []
        for part in _chunks(rows, 256):
            x = np.asarray(images[part])
            counts[name] += np.bincount(x.ravel(), minlength=256)
            per_image.append(x.mean(axis=(1, 2)))
        means[name] = np.concatenate(per_image)
    pooled = np.concatenate(list(means.values()))
    smallest = min(len(m) for m in means.values())
    bins = bins or int(np.clip(2 * np.sqrt(smallest), 10, 40))
    edges = np.linspace(pooled.min() - 0.5, pooled.max() + 0.5, bins + 1)
    for name, rows in groups.items():
        label, colour = f"{name} ({len(rows):,})", class_colour(name)
        axes[0, 0].plot(np.arange(256), counts[name] / counts[name].sum(), lw=1.2, color=colour)
        axes[0, 1].hist(means[name], edges, density=True, histtype="step", lw=1.8, color=colour)
        axes[0, 1].plot([], [], color=colour, lw=1.8, label=label)  # a line, not a box, in the key
    axes[0, 0].set(xlabel="grey level (uint8)", ylabel="share of pixels", title="pixel intensities")
    axes[0, 1].set(xlabel="mean grey level of an image", ylabel="density")
    axes[0, 1].set_title(f"exposure: per-image mean ({bins} bins)")
    fig.legend(*axes[0, 1].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig


def scalings_figure(imgs: Sequence[np.ndarray], mean: float, std: float) -> Figure:
    """Each image (a row) after each scaling (a column), plus a row of value histograms.

    Each column is shown on its documented output range ([0, 1], or [-mean/std, (1-mean)/std]
    for z-score), so what differs between columns is the scaling, not the display: z-score looks
    like /255 (both are fixed linear maps) and differs only in its numbers, which the last row
    shows. Titles give each image's value range.
    (len(imgs) + 1) x 5 axes.
    """
    k = len(imgs)
    fig, axes = _figure(k + 1, len(SCALING_NAMES), (3 * len(SCALING_NAMES), 3 * k + 2.4))
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in SCALING_NAMES}
    for r, img in enumerate(imgs):
        for c, (name, x) in enumerate(scalings(img, mean, std).items()):
            lo, hi = (-mean / std, (1 - mean) / std) if name == "z-score" else (0.0, 1.0)
            ax = axes[r, c]
            ax.imshow(x, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{name}\n[{x.min():.2f}, {x.max():.2f}]", fontsize=9)
            ax.set_axis_off()
            pooled[name].append(x.ravel())
    for c, name in enumerate(SCALING_NAMES):
        ax = axes[k, c]
        ax.hist(np.concatenate(pooled[name]), bins=64, color="tab:gray")
        ax.set_title(f"{name}: values", fontsize=9)
        ax.set_yticks([])
    return fig


def mean_image_figure(means: dict[str, np.ndarray], reference: str | None = None) -> Figure:
    """Mean images side by side (grey 0..255); with `reference`, a second row of differences.

    Differences (group - reference) use a diverging map centred on 0: where a group is brighter
    on average shows red. len(means) axes, or 2 x len(means) with `reference`.
    """
    names = list(means)
    nrows = 1 if reference is None else 2
    fig, axes = _figure(nrows, len(names), (3.2 * len(names), 3.3 * nrows))
    for c, name in enumerate(names):
        ax = axes[0, c]
        ax.imshow(means[name], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"mean: {name}", fontsize=9)
        ax.set_axis_off()
    if reference is not None:
        if reference not in means:
            raise ValueError(f"reference: {reference!r} is not one of {names}")
        diffs = {n: means[n] - means[reference] for n in names}
        lim = max(float(np.abs(d).max()) for d in diffs.values()) or 1.0
        for c, name in enumerate(names):
            ax = axes[1, c]
            ax.set_axis_off()
            if name == reference:
                ax.text(0.5, 0.5, "(reference)", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.imshow(diffs[name], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{name} - {reference}\n(+-{lim:.0f} grey levels)", fontsize=9)
    return fig
