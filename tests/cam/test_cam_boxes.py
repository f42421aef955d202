"""pneumolib.cam.boxes and cam.box_run: maps -> boxes in original pixels, the rule fitted on
val by the challenge's metric, and `cam_run`'s boxes_<split>.csv and `rsna_map`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumolib.cam.boxes import (
    BoxRule,
    MapCollector,
    SplitMaps,
    boxes_table,
    fit_box_rule,
    rule_boxes,
)
from pneumolib.evaluate.boxes import parse_prediction_string


def _maps(
    maps: list[np.ndarray], probs: list[float], *, sizes: list[tuple[int, int]], cache: int
) -> SplitMaps:
    collector = MapCollector(map_size=maps[0].shape[0], cache_size=cache)
    ids = [f"p{i}" for i in range(len(maps))]
    collector.add(ids, np.stack(maps), np.asarray(probs), sizes=np.asarray(sizes))
    return collector.maps


def _blob(m: np.ndarray, x: int, y: int, w: int, h: int, value: float = 1.0) -> np.ndarray:
    m[y : y + h, x : x + w] = value
    return m


def test_one_blob_gives_one_box_in_original_pixels_of_a_portrait_film() -> None:
    m = _blob(np.zeros((64, 64), np.float32), 30, 10, 10, 20)
    maps = _maps([m], [0.8], sizes=[(200, 100)], cache=32)
    boxes, scores = rule_boxes(maps, BoxRule(prob_floor=0.5))["p0"]
    # map px / 2 -> cache (15, 5, 5, 10); scale 32 / 200, portrait: x offset 50 px x scale
    np.testing.assert_allclose(boxes, [[15 / 0.16 - 50, 5 / 0.16, 5 / 0.16, 10 / 0.16]])
    np.testing.assert_allclose(scores, [0.8])  # the probability x the component's peak (1)


def test_two_blobs_two_boxes_ordered_by_strength_and_clipped_to_the_film() -> None:
    m = _blob(np.zeros((64, 64), np.float32), 2, 2, 12, 12, 0.8)
    m = _blob(m, 40, 40, 20, 20)
    maps = _maps([m], [0.9], sizes=[(64, 48)], cache=64)  # a portrait film, 64 x 48
    boxes, scores = rule_boxes(maps, BoxRule(rel_threshold=0.5, prob_floor=0.0))["p0"]
    np.testing.assert_allclose(scores, [0.9, 0.72])
    np.testing.assert_allclose(boxes[0], [32, 40, 16, 20])  # x offset 8 px, cut at width 48
    np.testing.assert_allclose(boxes[1], [0, 2, 6, 12])  # starts in the pad: cut at 0
    table = boxes_table({"p0": (boxes, scores)})
    got, conf = parse_prediction_string(table.PredictionString[0])
    np.testing.assert_allclose(conf, [0.9, 0.72])
    assert list(table.columns) == ["patientId", "PredictionString"]


def test_small_components_and_low_probabilities_give_no_box() -> None:
    small = _blob(np.zeros((64, 64), np.float32), 5, 5, 3, 3)  # 9 of 4,096 px
    big = _blob(np.zeros((64, 64), np.float32), 5, 5, 20, 20)
    maps = _maps([small, big, np.zeros((64, 64), np.float32)], [0.9, 0.3, 0.9],
                 sizes=[(64, 64)] * 3, cache=64)  # fmt: skip
    found = rule_boxes(maps, BoxRule(min_area=0.01, prob_floor=0.5))
    assert [len(found[p][0]) for p in ("p0", "p1", "p2")] == [0, 0, 0]
    found = rule_boxes(maps, BoxRule(min_area=0.001, prob_floor=0.2))
    assert [len(found[p][0]) for p in ("p0", "p1", "p2")] == [1, 1, 0]
    assert boxes_table(found).PredictionString[2] == ""


def test_at_most_four_boxes() -> None:
    m = np.zeros((64, 64), np.float32)
    for k in range(6):
        _blob(m, 2 + 10 * k, 2, 6, 6, 1.0 - 0.1 * k)
    maps = _maps([m], [1.0], sizes=[(64, 64)], cache=64)
    _, scores = rule_boxes(maps, BoxRule(rel_threshold=0.3, min_area=0.0, prob_floor=0.0))["p0"]
    np.testing.assert_allclose(scores, [1.0, 0.9, 0.8, 0.7])


def test_fit_picks_the_rule_that_scores_best_on_val() -> None:
    """Positives (p 0.9) have their box as a flat blob in the good source and far from it in
    the bad one; negatives (p 0.15) have a blob in both. So the good source with a floor above
    0.15 scores 1.0, and the first such rule in grid order is (0.3, 0.002, floor 0.2)."""
    truth, good, bad, probs = {}, [], [], []
    for i in range(6):
        pos = i % 2 == 0
        x, y = 6 + 3 * i, 8 + 2 * i
        good.append(_blob(np.zeros((64, 64), np.float32), x, y, 14, 18))
        bad.append(_blob(np.zeros((64, 64), np.float32), 44, 40, 14, 18))
        truth[f"p{i}"] = np.array([[x, y, 14, 18]], float) if pos else np.zeros((0, 4))
        probs.append(0.9 if pos else 0.15)
    sizes = [(64, 64)] * 6
    found = {
        ("cam", "bad"): _maps(bad, probs, sizes=sizes, cache=64),
        ("gradcam", "good"): _maps(good, probs, sizes=sizes, cache=64),
    }
    rule, table = fit_box_rule(found, truth)
    assert rule == BoxRule("gradcam", "good", 0.3, 0.002, 0.2)
    best = table.loc[table.rsna_map.idxmax()]
    assert best.rsna_map == pytest.approx(1.0) and best.n_images == 3
    assert table[table.method == "cam"].rsna_map.max() == pytest.approx(0.0)
    no_floor = table[(table.layer == "good") & (table.prob_floor == 0.0)].rsna_map
    assert no_floor.max() == pytest.approx(0.5)  # the negatives' boxes score 0 each


@pytest.fixture()
def run_copy(small_run: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(small_run["run"], out)
    return out


@pytest.mark.slow
def test_cam_run_writes_boxes_for_every_test_patient(
    run_copy: Path, small_run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from pneumolib.cam.run import cam_run
    from pneumolib.data.labels import read_index

    kw = {"n_overlays": 0, "n_boot": 50, "device": "cpu", "progress": False}
    summary = cam_run(run_copy, "test", **kw)
    out = capsys.readouterr().out
    assert "rule fitted on val" in out and "calibration.json not found" in out
    index = read_index(small_run["cache"])
    test_ids = index.patientId[index.split == "test"]
    boxes = pd.read_csv(run_copy / "boxes_test.csv", dtype={"patientId": str})
    assert list(boxes.columns) == ["patientId", "PredictionString"]
    assert sorted(boxes.patientId) == sorted(test_ids)
    for s in boxes.PredictionString.fillna(""):
        b, conf = parse_prediction_string(s)
        assert len(b) <= 4 and ((b[:, :2] >= 0) & (b[:, :2] + b[:, 2:] <= 128)).all()
        assert ((conf >= 0) & (conf <= 1)).all()
    saved = json.loads((run_copy / "cam_test.json").read_text())
    block = saved["rsna_map"]
    assert set(block) == {"value", "ci", "n_images"} and block == summary["rsna_map"]
    assert block["n_images"] >= (index[index.split == "test"].target == 1).sum()
    rule = json.loads((run_copy / "box_rule.json").read_text())
    assert saved["box_rule"] == rule["rule"]
    stamp = (run_copy / "box_rule.json").stat().st_mtime_ns

    again = cam_run(run_copy, "test", **kw)  # reuses the fitted rule
    assert "the rule fitted on val" in capsys.readouterr().out
    assert (run_copy / "box_rule.json").stat().st_mtime_ns == stamp
    assert again["rsna_map"] == block

    rule["checkpoint_sha256"] = "0" * 64  # made for another checkpoint: fitted again
    (run_copy / "box_rule.json").write_text(json.dumps(rule))
    cam_run(run_copy, "val", **kw)
    assert "rule fitted on val" in capsys.readouterr().out
    assert json.loads((run_copy / "box_rule.json").read_text())["checkpoint_sha256"] != "0" * 64
    assert (run_copy / "boxes_val.csv").is_file()


def test_model_card_shows_the_boxes_score() -> None:
    from pneumolib.evaluate.card_sections import localisation_section

    summary = {"file": "cam_test.json", "n": 3, "method": "cam", "layer": "net.layer4"}
    box = {"rsna_map": {"value": 0.125, "ci": [0.05, 0.2], "n_images": 9}}
    box["box_rule"] = {"method": "gradcam", "layer": "net.layer3"}
    text = "\n".join(localisation_section([summary | box], "RUN"))
    assert "0.125 [0.050, 0.200] over 9 images" in text and "gradcam on net.layer3" in text
    assert "challenge" not in "\n".join(localisation_section([summary], "RUN"))
