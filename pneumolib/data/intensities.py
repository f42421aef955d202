"""Pixel intensities: five scalings of an image, and histograms and mean images of the cache.

Pixels come from the memory-mapped uint8 (N, S, S) cache, always in chunks, so the full RSNA
cache (26,684 x 256 x 256) never has to fit in memory. Figures are pyplot-free `Figure`s.
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

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pneumolib.base.plots import class_colour, figure_grid

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


def mean_image(
    images: np.ndarray, rows: Sequence[int] | np.ndarray, chunk: int = 256
) -> np.ndarray:
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
    10 to 40. Colours: `core.plots.CLASS_COLOURS`. 2 axes.
    """
    fig, axes = figure_grid(1, 2, (12, 3.8))
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
    fig, axes = figure_grid(k + 1, len(SCALING_NAMES), (3 * len(SCALING_NAMES), 3 * k + 2.4))
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
    fig, axes = figure_grid(nrows, len(names), (3.2 * len(names), 3.3 * nrows))
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
