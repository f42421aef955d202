"""Scalings (ranges and known values), dataset tables, box heat map, chunked pixel statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumolib.data import explore, intensities
from pneumolib.data.labels import open_images, read_index, read_stats


@pytest.fixture(scope="module")
def cache(demo_cache: Path) -> tuple[pd.DataFrame, np.ndarray, dict]:
    return read_index(demo_cache), open_images(demo_cache), read_stats(demo_cache)


@pytest.fixture
def ramp() -> np.ndarray:
    """uint8 (10, 20): grey levels 20..219, each once."""
    return np.arange(20, 220, dtype=np.uint8).reshape(10, 20)


# --- scalings ----------------------------------------------------------------------------


def test_scale_255_known_values(ramp: np.ndarray) -> None:
    x = intensities.scale_255(np.array([[0, 51, 255]], np.uint8))
    assert x.dtype == np.float32 and x.shape == (1, 3)
    np.testing.assert_allclose(x, [[0.0, 0.2, 1.0]], atol=1e-7)
    y = intensities.scale_255(ramp)
    assert 0 <= y.min() and y.max() <= 1


def test_scale_minmax_spans_unit_range(ramp: np.ndarray) -> None:
    x = intensities.scale_minmax(ramp)
    assert x.dtype == np.float32 and x.shape == ramp.shape
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x.ravel(), (np.arange(200) / 199), atol=1e-6)
    flat = intensities.scale_minmax(np.full((4, 4), 7, np.uint8))
    assert np.all(flat == 0)


def test_scale_zscore_of_data_with_given_mean_std() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    v = img / 255.0
    z = intensities.scale_zscore(img, float(v.mean()), float(v.std()))
    assert z.dtype == np.float32
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    # the documented range holds for any input
    m, s = 0.3, 0.2
    z = intensities.scale_zscore(np.array([[0, 255]], np.uint8), m, s)
    np.testing.assert_allclose(z, [[-m / s, (1 - m) / s]], rtol=1e-6)
    with pytest.raises(ValueError, match="std"):
        intensities.scale_zscore(img, 0.5, 0.0)


def test_scale_percentile_clips_the_tails(ramp: np.ndarray) -> None:
    img = ramp.copy()
    img[0, 0], img[0, 1] = 0, 255  # outliers a min-max scaling would be ruled by
    x = intensities.scale_percentile(img, lo=5, hi=95)
    p5, p95 = np.percentile(img, [5, 95])
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert np.all(x[img <= p5] == 0) and np.all(x[img >= p95] == 1)
    inside = (img > p5) & (img < p95)
    np.testing.assert_allclose(x[inside], (img[inside] - p5) / (p95 - p5), rtol=1e-5)
    # the window is wider than with min-max: more of the range goes to the body of the data
    assert np.ptp(x[inside]) > np.ptp(intensities.scale_minmax(img)[inside])
    with pytest.raises(ValueError, match="lo, hi"):
        intensities.scale_percentile(img, lo=50, hi=10)


def test_clahe_keeps_shape_and_range_and_raises_local_contrast() -> None:
    rng = np.random.default_rng(1)
    # a low-contrast image: grey levels 100..115 only
    img = (100 + rng.integers(0, 16, (64, 64))).astype(np.uint8)
    x = intensities.clahe(img, clip=2.0, tiles=4)
    assert x.shape == img.shape and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert np.ptp(x) > np.ptp(intensities.scale_255(img))


def test_scalings_reject_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        intensities.scale_255(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        intensities.clahe(np.zeros((2, 4, 4), np.uint8))
    out = intensities.scalings(np.zeros((8, 8), np.uint8) + 9, 0.5, 0.25)
    assert list(out) == list(intensities.SCALING_NAMES)


# --- tables ------------------------------------------------------------------------------


def test_overview_counts_match_index(cache) -> None:
    index, _, _ = cache
    t = explore.dataset_overview(index)
    n, n_pos = len(index), int(index.target.sum())
    assert t["class_balance"].loc["positive", "count"] == n_pos
    assert t["class_balance"]["count"].sum() == n
    assert t["classes"]["count"].sum() == n
    assert t["classes"].loc["Lung Opacity", "count"] == n_pos
    for name in ("view_target", "sex_target", "split_target"):
        assert t[name]["total"].sum() == n
        assert t[name]["positive"].sum() == n_pos
    ap = index[index.view == "AP"]
    assert t["view_target"].loc["AP", "positive"] == ap.target.sum()
    assert t["view_target"].loc["AP", "positive_rate"] == pytest.approx(ap.target.mean(), abs=1e-3)
    assert t["age_target"]["total"].sum() == index.age.notna().sum()
    assert list(t["split_target"].index) == ["train", "val", "test"]
    boxes = t["boxes_per_patient"]
    assert boxes["patients"].sum() == n_pos
    assert (boxes.index * boxes["patients"]).sum() == sum(len(b) for b in index.boxes)


# --- boxes -------------------------------------------------------------------------------


def test_box_heatmap_sums_to_total_box_area(cache) -> None:
    index, _, stats = cache
    size = stats.size
    heat = explore.box_heatmap(index, size)
    assert heat.shape == (size, size)
    area = sum(w * h for bs in index.boxes for _, _, w, h in bs)
    assert area > 0
    assert heat.sum() == pytest.approx(area, rel=1e-9)


def test_box_heatmap_fractional_and_clipped_boxes() -> None:
    index = pd.DataFrame({"boxes": [[[1.5, 2.0, 2.0, 1.0]], [[6.0, 6.0, 10.0, 10.0]], []]})
    heat = explore.box_heatmap(index, 8)
    # [1.5, 3.5] x [2, 3]: half of column 1, all of 2, half of 3
    np.testing.assert_allclose(heat[2, 1:4], [0.5, 1.0, 0.5])
    assert heat[:2].sum() == 0 and heat[3:6].sum() == 0
    # the second box is cut at the border: 2 x 2 pixels remain
    np.testing.assert_allclose(heat[6:, 6:], np.ones((2, 2)))
    assert heat.sum() == pytest.approx(2.0 + 4.0)


def test_box_table_one_row_per_box(cache) -> None:
    index, _, _ = cache
    boxes = explore.box_table(index)
    assert len(boxes) == sum(len(b) for b in index.boxes)
    assert np.allclose(boxes.area, boxes.w * boxes.h)


# --- pixels ------------------------------------------------------------------------------


def test_mean_image_equals_numpy_mean(cache) -> None:
    index, images, _ = cache
    rows = index.row.to_numpy()[::-1]  # order must not matter
    got = intensities.mean_image(images, rows, chunk=7)  # several chunks and a ragged last one
    np.testing.assert_allclose(got, np.asarray(images[np.sort(rows)], np.float64).mean(axis=0))
    means = intensities.mean_images(images, index, by="target")
    assert set(means) == {"0", "1"}
    pos = index.row[index.target == 1].to_numpy()
    np.testing.assert_allclose(means["1"], images[pos].mean(axis=0))
    with pytest.raises(ValueError, match="rows"):
        intensities.mean_image(images, [])


def test_intensity_histogram_counts_every_pixel(cache) -> None:
    _, images, _ = cache
    rows = [0, 3, 5]
    counts = intensities.intensity_histogram(images, rows, chunk=2)
    assert counts.shape == (256,) and counts.sum() == 3 * images.shape[1] * images.shape[2]
    np.testing.assert_array_equal(counts, np.bincount(images[rows].ravel(), minlength=256))


# --- figures -----------------------------------------------------------------------------


def test_figures_have_the_expected_axes(cache) -> None:
    from matplotlib.figure import Figure

    index, images, stats = cache
    size = stats.size
    n_pos = int(index.target.sum())
    n_classes = index["class"].nunique()
    heat = explore.box_heatmap(index, size)
    means = intensities.mean_images(images, index, by="class")
    figs = {
        "overview": (explore.overview_figure(index), 4),
        "demographics": (explore.demographics_figure(index), 2),
        "box sizes": (explore.box_size_figure(index, size), 2),
        "heat map": (explore.box_heatmap_figure(heat, n_pos, background=means["Normal"]), 2),
        "examples": (explore.class_examples_figure(images, index, per_class=2), 2 * n_classes),
        "histograms": (intensities.intensity_histograms_figure(images, index, max_per_group=5), 2),
        "scalings": (intensities.scalings_figure([images[0], images[1]], 0.4, 0.2), 3 * 5),
        "means": (intensities.mean_image_figure(means, reference="Normal"), 2 * n_classes),
    }
    for name, (fig, n_axes) in figs.items():
        assert isinstance(fig, Figure), name
        assert len(fig.axes) == n_axes, name
    assert figs["overview"][0].axes[0].get_title() == "target"
    hist_ax = figs["histograms"][0].axes[0]
    assert len(hist_ax.get_lines()) == n_classes  # one curve per class
    with pytest.raises(ValueError, match="reference"):
        intensities.mean_image_figure(means, reference="nope")


def test_class_titles_are_wrapped_not_cut(cache) -> None:
    index, images, _ = cache
    index = index.assign(**{"class": np.where(index.target == 1, "Lung Opacity", "")})
    index.loc[index.target == 0, "class"] = "No Lung Opacity / Not Normal"
    fig = explore.class_examples_figure(images, index, per_class=2)
    titles = [" ".join(ax.get_title().splitlines()[:-1]) for ax in fig.axes if ax.get_title()]
    assert "No Lung Opacity / Not Normal" in titles and "Lung Opacity" in titles


def test_figures_colour_classes_with_the_one_mapping(cache) -> None:
    from matplotlib.colors import to_rgba

    from pneumolib.base.plots import CLASS_COLOURS

    index, images, _ = cache
    classes = sorted(index["class"].unique())
    hist = intensities.intensity_histograms_figure(images, index, max_per_group=20)
    colours = [to_rgba(line.get_color()) for line in hist.axes[0].get_lines()]
    assert colours == [to_rgba(CLASS_COLOURS[c]) for c in classes]
    bars = explore.overview_figure(index).axes[0].patches  # target: negative, positive
    assert [to_rgba(b.get_facecolor()) for b in bars] == [
        to_rgba(CLASS_COLOURS["negative"]),
        to_rgba(CLASS_COLOURS["positive"]),
    ]


def test_exposure_histogram_bins_span_the_per_image_means(cache) -> None:
    index, images, _ = cache
    fig = intensities.intensity_histograms_figure(images, index, max_per_group=None)
    ax = fig.axes[1]
    means = np.asarray(images[index["row"].to_numpy()]).mean(axis=(1, 2))
    steps = list(ax.patches)  # one step outline per class
    assert len(steps) == index["class"].nunique()
    xs = np.concatenate([p.get_xy()[:, 0] for p in steps])
    assert xs.min() == pytest.approx(means.min() - 0.5) and xs.max() == pytest.approx(
        means.max() + 0.5
    )
    n_bins = len(np.unique(xs)) - 1
    assert n_bins >= 10 and f"({n_bins} bins)" in ax.get_title()
