"""pneumolib.cam.sentences on hand-made summaries, tables and boxes: the exact sentences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pneumolib.cam.sentences import (
    SHORTCUT_ROWS,
    pointing_ceiling,
    pointing_verdicts,
    resolution_sentence,
    shortcut_verdicts,
)


def _summary(**kw: float) -> dict:
    s = {
        "split": "val",
        "n": 9,
        "threshold": 0.5,
        "pointing_hit": 1 / 3,
        "pointing_hit_ci_low": 0.11,
        "pointing_hit_ci_high": 0.67,
        "box_area_fraction": 0.05,
        "pointing_lift_ci_low": 0.06,
        "pointing_lift_ci_high": 0.62,
        "energy_in_box": 0.12,
        "energy_lift_ci_low": -0.01,
        "energy_lift_ci_high": 0.15,
    }
    return {**s, **kw}


def test_pointing_verdicts_judge_each_map_by_its_paired_interval():
    below = _summary(pointing_hit=0.0, pointing_lift_ci_low=-0.08, pointing_lift_ci_high=-0.0004)
    got = pointing_verdicts(
        {"Grad-CAM layer2": _summary(), "CAM layer4": below, "Grad-CAM layer3": _summary(n=0)}
    )
    assert got == [
        "Grad-CAM layer2 (val, 9 true positives): the peak lands in an expert box for 33% "
        "[11%, 67%] of them against a chance of 5%: above chance (paired difference "
        "[+6%, +62%]); 12% of the evidence lies in the boxes: not shown to differ from chance "
        "(paired difference [-1%, +15%] holds 0).",
        "CAM layer4 (val, 9 true positives): the peak lands in an expert box for 0% [11%, 67%] "
        "of them against a chance of 5%: below chance (paired difference [-8%, -0.04%]); 12% of "
        "the evidence lies in the boxes: not shown to differ from chance (paired difference "
        "[-1%, +15%] holds 0).",
        "Grad-CAM layer3: no true positive to score on val (no positive with a box was called "
        "at probability 0.5 or more), so the map has nothing to point at.",
    ]


def _shortcut(removed_auc: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ROC AUC": [0.8, 0.97, removed_auc],
            "AUC on AP": [0.75, 0.99, 0.55],
            "AUC on PA": [0.8, 0.8, 0.8],
            "map on marker (max)": [0.7, 0.95, 0.95],
            "evidence on marker": [0.02, 0.072, 0.05],
            "marker's share of image": [0.024] * 3,
        },
        index=list(SHORTCUT_ROWS),
    )


def test_shortcut_verdicts_compare_the_marker_model_with_and_without_the_marker():
    assert shortcut_verdicts(_shortcut(0.6)) == [
        "The marker model scores test AUC 0.970 on films with the marker against 0.800 for the "
        "clean model; with the marker removed from the same films it scores 0.600, 0.200 below "
        "the clean model: part of what it learned was the text, not the lungs. On AP films, "
        "where the marker is: 0.990 with it, 0.550 without (clean model 0.750).",
        "On the films that carry the marker, the marker model's layer4 map reaches 0.95 on it "
        "(maps run 0 to 1; the clean model's 0.70 at the same spot), and 7.2% of its evidence "
        "lies there, 3.0 times the marker's share of the image (2.4%; the clean model 2.0%).",
    ]
    held = shortcut_verdicts(_shortcut(0.85))[0]
    assert "scores 0.850, not below the clean model: on these films it learned the lungs" in held
    one_class = shortcut_verdicts(_shortcut(math.nan))[0]
    assert "scores n/a, these films hold one class only" in one_class


def test_shortcut_verdicts_refuse_another_table():
    with pytest.raises(ValueError, match="missing"):
        shortcut_verdicts(_shortcut(0.6).drop(index=SHORTCUT_ROWS[2]))


def test_pointing_ceiling_a_box_without_a_cell_peak_cannot_be_hit():
    boxes = [
        [[0, 0, 32, 32]],  # fills the corner cell, where the upsampled map is flat to the edge
        [[40, 40, 10, 10]],  # holds the centre of cell (1, 1): the peak lands inside
        [[10, 10, 5, 5]],  # a small box off the cell's peak (the flat corner's first pixel)
        [[80, 20, 6, 6]],  # between cell centres: its cell's peak lies outside the box
    ]
    np.testing.assert_array_equal(pointing_ceiling(boxes, 128, 32), [True, True, False, False])
    assert pointing_ceiling(boxes, 128, 8).all()  # on a fine grid every box holds a peak
    many = pointing_ceiling(boxes * 75, 128, 32)  # more images than one chunk
    np.testing.assert_array_equal(many, [True, True, False, False] * 75)
    halved = ["[[0, 0, 16, 16]]", "[[20, 20, 5, 5]]", "[[5, 5, 2.5, 2.5]]", "[[40, 10, 3, 3]]"]
    np.testing.assert_array_equal(pointing_ceiling(halved, 128, 32, box_scale=2.0), [1, 1, 0, 0])
    assert pointing_ceiling([], 128, 32).shape == (0,)
    with pytest.raises(ValueError, match="multiple"):
        pointing_ceiling(boxes, 100, 32)


def test_resolution_sentence():
    boxes = [[[0, 0, 32, 32]], [[40, 40, 10, 10]], [[10, 10, 5, 5]]]
    assert resolution_sentence(boxes, size=128, stride=32) == (
        "On layer4 (4×4 cells of 32 px at 128 px) even a perfect map puts its peak in a box for "
        "2 of these 3 images (67%): a box that holds no cell's peak cannot be hit, however well "
        "the network localises."
    )
    assert resolution_sentence([*boxes, "[]"], size=128, stride=32) == resolution_sentence(
        boxes, size=128, stride=32
    )  # an image without a box is left out
    assert (
        resolution_sentence(["[]"], size=128, stride=32) == "layer4: no image with a box to score."
    )
