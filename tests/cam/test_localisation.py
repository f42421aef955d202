"""pneumolib.cam.localisation on hand-made maps and boxes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumolib.cam.localisation import (
    box_area_fraction,
    box_distance,
    box_mask,
    energy_in_box,
    localisation_scores,
    pointing_game,
    scale_boxes,
    summarize_localisation,
)


def test_box_mask_union_and_pixel_centres():
    mask = box_mask([[2, 1, 3, 3], [3, 2, 3, 3]], 10, 10)
    assert mask.sum() == 9 + 9 - 4  # two 3x3 boxes overlapping in 2x2
    assert mask[1, 2] and mask[4, 5] and not mask[0, 2] and not mask[1, 1]
    assert box_mask("[[2, 1, 3, 3]]", 10, 10).sum() == 9  # JSON as stored in index.csv
    assert box_mask([[8, 8, 5, 5]], 10, 10).sum() == 4  # clipped at the border
    assert scale_boxes([[2, 1, 3, 3]], 2.0) == [[4.0, 2.0, 6.0, 6.0]]


def test_pointing_energy_and_area_known_values():
    maps = np.zeros((3, 10, 10))
    maps[0, 2, 3] = 1.0  # peak inside the box
    maps[1, 9, 9] = 1.0  # peak outside
    maps[1, 2, 3] = 0.5
    maps[2] = 1.0  # uniform: energy equals the area fraction, no peak to point with
    boxes = [[[2, 1, 3, 3]]] * 2 + [[[0, 0, 3, 3]]]  # box 3 holds pixel (0, 0), argmax's pick
    assert pointing_game(maps, boxes).tolist() == [True, False, False]
    np.testing.assert_allclose(energy_in_box(maps, boxes), [1.0, 0.5 / 1.5, 0.09])
    np.testing.assert_allclose(box_area_fraction(boxes, 10, 10), [0.09] * 3)
    np.testing.assert_allclose(energy_in_box(np.zeros((1, 10, 10)), boxes[:1]), [0.0])


def test_pointing_tolerance_counts_near_misses_by_distance():
    maps = np.zeros((3, 20, 20))
    maps[0, 5, 9] = 1.0  # centre (9.5, 5.5): 1.5 px right of the box [2, 2, 6, 6]
    maps[1, 12, 12] = 1.0  # centre (12.5, 12.5): 4.5 px right, 4.5 px below: 6.36 px away
    maps[2, 4, 4] = 1.0  # inside
    boxes = [[[2, 2, 6, 6]]] * 3
    assert pointing_game(maps, boxes).tolist() == [False, False, True]
    assert pointing_game(maps, boxes, tolerance=0.0).tolist() == [False, False, True]
    assert pointing_game(maps, boxes, tolerance=1.5).tolist() == [True, False, True]
    assert pointing_game(maps, boxes, tolerance=6.4).tolist() == [True, True, True]
    assert box_distance("[[2, 2, 6, 6]]", 12.5, 12.5) == pytest.approx(4.5 * 2**0.5)
    assert box_distance([], 0, 0) == np.inf
    df = localisation_scores(["a", "b", "c"], maps, boxes, tolerance=1.5)
    assert df["pointing_hit"].tolist() == [True, False, True]


def test_localisation_table_and_summary():
    rng = np.random.default_rng(1)
    maps = rng.random((20, 16, 16))
    boxes = [[[0, 0, 8, 8]]] * 10 + [[[4, 4, 4, 4], [10, 10, 2, 2]]] * 10
    ids = [f"p{i}" for i in range(20)]
    df = localisation_scores(ids, torch.as_tensor(maps), boxes)
    assert list(df.columns) == ["patientId", "pointing_hit", "energy_in_box", "box_area_fraction"]
    assert df["patientId"].tolist() == ids
    np.testing.assert_allclose(df["box_area_fraction"].iloc[[0, -1]], [0.25, 20 / 256])

    s = summarize_localisation(df, n_boot=500, seed=0)
    assert s["n"] == 20
    for name in ("pointing_hit", "energy_in_box", "box_area_fraction", "energy_lift"):
        assert s[f"{name}_ci_low"] <= s[name] <= s[f"{name}_ci_high"]
    assert s["box_area_fraction_ci_low"] < s["box_area_fraction_ci_high"]
    assert s["energy_in_box"] == pytest.approx(df["energy_in_box"].mean())
    assert summarize_localisation(df, n_boot=500, seed=0) == s  # the seed repeats
    assert np.isnan(summarize_localisation(df.iloc[:0])["pointing_hit"])
    with pytest.raises(ValueError, match="p0 has no box"):
        localisation_scores(["p0"], maps[:1], [[]])
