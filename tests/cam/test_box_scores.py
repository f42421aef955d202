"""Tests for the box pictures and tables: outcomes at one IoU, the outcome grid, and a run's
boxes scored overall and per view."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from pneumolib.cam.box_scores import box_examples, box_score_table, read_boxes
from pneumolib.cam.run import cam_run
from pneumolib.evaluate.box_figures import box_outcome_grid
from pneumolib.evaluate.boxes import box_outcomes


def test_outcomes_tell_hits_false_boxes_and_missed_boxes_apart() -> None:
    truth = [[0, 0, 10, 10], [50, 50, 10, 10]]
    boxes = [[100, 100, 5, 5], [0, 0, 10, 10], [1, 0, 10, 10]]  # false, hit, a second try
    hit, found = box_outcomes(truth, boxes, [0.8, 0.9, 0.7], iou=0.5)
    assert hit.tolist() == [False, True, False]  # one expert box, one hit: by confidence
    assert found.tolist() == [True, False]
    hit, found = box_outcomes(truth, boxes, [0.8, 0.6, 0.7], iou=0.5)
    assert hit.tolist() == [False, False, True]  # the other one came first this time
    assert box_outcomes([], boxes, [1, 1, 1])[0].tolist() == [False] * 3


def test_outcome_grid_draws_every_box_once() -> None:
    images = np.zeros((3, 64, 64), np.uint8)
    truths = [[[0, 0, 10, 10]], [], [[5, 5, 5, 5], [30, 30, 9, 9]]]
    preds = [(np.array([[0, 0, 10, 10]]), np.array([0.9])), (np.zeros((0, 4)), np.zeros(0)),
             (np.array([[40, 40, 5, 5]]), np.array([0.4]))]  # fmt: skip
    fig = box_outcome_grid(images, truths, preds, titles=["a", "b", "c"], ncols=2)
    axes = [ax for ax in fig.axes if ax.images]
    counts = [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in axes]
    assert counts == [2, 0, 3]
    assert len(fig.legends) == 1


@pytest.mark.slow
def test_a_runs_boxes_scored_overall_and_per_view(small_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run["run"], run)
    summary = cam_run(run, "test", n_overlays=0, n_boot=50, device="cpu",
                      cache=small_run["cache"], progress=False)  # fmt: skip
    table = box_score_table(run, "test", cache=small_run["cache"], n_boot=50)
    assert table.loc["all", "n_images"] == summary["rsna_map"]["n_images"]
    assert table.loc["all", "rsna_map"] == pytest.approx(summary["rsna_map"]["value"], nan_ok=True)
    assert set(table.index) >= {"all", "AP", "PA"}
    assert table.loc[["AP", "PA"], "n_images"].sum() == table.loc["all", "n_images"]
    ids = list(read_boxes(run, "test"))[:3]
    images, truths, preds = box_examples(run, "test", ids, cache=small_run["cache"])
    assert images.shape[0] == len(truths) == len(preds) == 3
    for boxes in truths:
        assert (np.asarray(boxes).reshape(-1, 4)[:, :2] >= -0.5).all()  # inside the cache image
