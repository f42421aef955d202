"""pneumolib.evaluate.figures: plots draw on the given axes; the sample grid's choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from predictions_data import scores as _scores

from pneumolib.evaluate import figures as ef


def test_plot_functions_return_figures_on_given_axes():
    from matplotlib.figure import Figure

    y, p = _scores(200, 15)
    fig = Figure()
    ax = fig.add_subplot()
    assert ef.plot_roc(y, p, thresholds={"0.5": 0.5}, ax=ax) is fig
    assert len(ax.lines) == 3  # curve, chance line, one operating point


def test_pick_samples_puts_the_most_confident_mistakes_first():
    pred = pd.DataFrame(
        {
            "prob": [0.95, 0.60, 0.05, 0.40, 0.90, 0.10, 0.80, 0.20],
            "target": [0, 0, 1, 1, 1, 0, 1, 0],
        }
    )  # FP: 0 (0.95), 1 (0.60); FN: 2 (0.05), 3 (0.40); the rest right
    idx = ef.pick_samples(pred, 0.5, n=6, seed=0)
    assert list(idx[:3]) == [0, 2, 1]  # FP 0.95, FN 0.05, FP 0.60
    assert len(idx) == 6 and len(set(idx)) == 6
    assert set(idx[3:]) <= {4, 5, 6, 7}  # then correct calls
    assert list(ef.pick_samples(pred, 0.5, n=6, seed=0)) == list(idx)
    assert len(ef.pick_samples(pred, 0.5, n=20)) == len(pred)
    fig = ef.plot_samples(np.zeros((3, 8, 8), np.uint8), pred.iloc[idx[:3]], threshold=0.5, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and all("WRONG" in t for t in titles)


def test_coincident_operating_points_stay_apart_in_shape_size_and_legend():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    thr = {"0.5": 0.5, "youden": 0.6, "low": 0.15}  # 0.5 and 0.6 give the same calls
    for plot in (ef.plot_roc, ef.plot_pr):
        fig = plot(y, p, thresholds=thr)
        points = [ln for ln in fig.axes[0].lines if ln.get_label().startswith(tuple(thr))]
        assert len(points) == 3
        assert len({ln.get_marker() for ln in points}) == 3  # distinct shapes
        assert len({ln.get_markersize() for ln in points}) == 3  # nested outlines
        assert all(ln.get_markerfacecolor() == "none" for ln in points)  # hollow: see through
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(t.startswith("youden") and t.endswith("same as 0.5") for t in labels)
        assert not any(t.startswith("low") and "same as" in t for t in labels)


def test_reliability_uses_equal_count_bins_and_says_why_few():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.clip(np.where(y == 1, 0.97, 0.03) + rng.normal(0, 0.01, 300), 0, 1)  # confident
    ax = ef.plot_reliability(y, p).axes[0]
    model = next(c for c in ax.containers if c.get_label() == "model")
    assert len(model.lines[0].get_xdata()) == 10  # equal-width bins would leave 2
    assert any("10 equal-count bins, ~30 cases each" in t.get_text() for t in ax.texts)
    small = ef.plot_reliability(y[:30], p[:30]).axes[0]
    assert any("few bins: only 30 cases" in t.get_text() for t in small.texts)


def test_reliability_before_and_after_with_intervals():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.25).astype(int)
    p = np.clip(0.25 + 0.3 * (y - 0.25) + rng.normal(0, 0.05, 400), 0.01, 0.99)
    raw = np.clip(p + 0.25, 0, 1)  # too high, as balanced batches leave it
    ax = ef.plot_reliability(y, p, raw=raw).axes[0]
    curves = {c.get_label(): c for c in ax.containers if not c.get_label().startswith("_")}
    assert set(curves) == {"raw", "calibrated"}
    x_raw, x_cal = (curves[k].lines[0].get_xdata() for k in ("raw", "calibrated"))
    assert np.mean(x_raw) > np.mean(x_cal) + 0.2
    assert "raw ->" in ax.get_title() and "calibrated" in ax.get_title()
    bars = curves["calibrated"].lines[2][0].get_segments()  # one Wilson interval per bin
    assert len(bars) == len(x_cal) and all(s[0][1] < s[1][1] for s in bars)
    lo, hi = ef.wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert lo[0] == pytest.approx(0, abs=1e-12) and hi[2] == pytest.approx(1)
    assert lo[1] < 0.5 < hi[1] and hi[0] == pytest.approx(0.2775, abs=1e-4)  # Wilson, 0 of 10


def test_subgroup_bars_label_an_undefined_group_na():
    sub = pd.DataFrame(
        {
            "variable": ["age_band"] * 3,
            "group": ["<20", "20-39", "40-59"],
            "n": [3, 40, 50],
            "roc_auc": [np.nan, 0.8, 0.9],
            "roc_auc_lo": [np.nan, 0.7, 0.8],
            "roc_auc_hi": [np.nan, 0.9, 0.95],
        }
    )
    ax = ef.plot_subgroups(sub, "roc_auc").axes[0]
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    assert ax.texts[0].get_position()[0] == ax.get_xticks()[0]  # on the <20 slot
    assert "n/a" in ax.get_xlabel()


def test_prob_hist_legend_outside_the_bars_and_class_colours():
    from matplotlib.colors import to_rgb

    from pneumolib.base.plots import class_colour

    y, p = _scores(200, 3)
    fig = ef.plot_prob_hist(y, p, thresholds={"0.5": 0.5, "youden": 0.4})
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert to_rgb(ax.patches[-1].get_facecolor()) == to_rgb(class_colour(1))


def test_samples_title_says_when_there_are_no_mistakes(demo_cache):
    from pneumolib.data.labels import read_index

    rows = read_index(demo_cache)
    pred = rows[["patientId", "target"]].assign(prob=rows["target"].astype(float))  # all right
    thr = {"thresholds": {"youden": {"threshold": 0.5}}, "split": "test"}
    title = ef.sample_predictions_figure(pred, demo_cache, metrics=thr, n=4)._suptitle.get_text()
    assert "no mistakes at this threshold" in title and "mistakes first" not in title
    pred.loc[0, "prob"] = 1.0 - pred.loc[0, "prob"]  # one mistake
    title = ef.sample_predictions_figure(pred, demo_cache, metrics=thr, n=4)._suptitle.get_text()
    assert "1 mistake, most confident first" in title
