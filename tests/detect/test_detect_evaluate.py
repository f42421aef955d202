"""The commands that read runs, on a detector run: evaluate (boxes_<split>.csv and
metrics_<split>.json, with and without the classifier gate), predict on its checkpoint, submit
from it, compare two runs on rsna_map, and the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pneumolib.base.config import demo_config
from pneumolib.cli import main
from pneumolib.data.labels import read_index
from pneumolib.detect.loop import fit_detector
from pneumolib.evaluate.boxes import parse_prediction_string
from pneumolib.evaluate.card import write_card
from pneumolib.evaluate.compare import compare_runs, comparison_text, rsna_map_difference

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector(small_run, tmp_path_factory) -> Path:
    """A detector trained briefly on small_run's cache (64 px, 1 epoch, 2 steps), evaluated on
    test (without the gate). Read-only: copy to change."""
    out = tmp_path_factory.mktemp("det") / "det"
    cfg = demo_config(out.parent, cache=str(small_run["cache"]), out=str(out), workers=0)
    cfg = cfg.replace(
        cache_size=64, image_size=64, epochs=1, weights="none", mode="scratch", batch_size=8,
        max_steps_per_epoch=2, eval_batch_size=32, device="cpu",
    )  # fmt: skip
    torch.manual_seed(0)
    fit_detector(cfg, progress=False)
    assert main(["evaluate", "--run", str(out), "--split", "test", "--n-boot", "50"]) == 0
    return out


def test_evaluate_on_a_detector_writes_its_boxes_and_metrics(detector, small_run):
    index = read_index(small_run["cache"])
    test_ids = set(index.loc[index["split"] == "test", "patientId"].astype(str))
    boxes = pd.read_csv(detector / "boxes_test.csv", dtype={"patientId": str},
                        keep_default_na=False)  # fmt: skip
    assert list(boxes.columns) == ["patientId", "PredictionString"]
    assert set(boxes["patientId"]) == test_ids and len(boxes) == len(test_ids)
    m = json.loads((detector / "metrics_test.json").read_text())
    cut = m["box_threshold"]
    hist = pd.read_csv(detector / "metrics.csv")
    assert cut == pytest.approx(hist["val_box_threshold"].iloc[-1])  # the val-chosen cut
    for text in boxes["PredictionString"]:
        b, s = parse_prediction_string(text)
        assert (s >= cut).all()
        if len(b):  # original pixels: the demo films are 128 px, the cache 64
            assert b[:, :2].max() <= 128 + 1
    assert m["kind"] == "detector" and set(m["rsna_map"]) == {"value", "ci", "n_images"}
    assert m["roc_auc"] is None or 0.0 <= m["roc_auc"] <= 1.0
    assert m["n"] == len(test_ids)
    assert set(m["rsna_map_by_view"]) <= {"AP", "PA"} and m["rsna_map_by_view"]
    card = write_card(detector).read_text()  # the card reads the file without crashing
    assert "ROC AUC" in card


def test_evaluate_with_the_gate_reports_both_and_the_paired_difference(
    detector, small_run, tmp_path, capsys
):
    run, gate = tmp_path / "det", tmp_path / "gate"
    shutil.copytree(detector, run)
    shutil.copytree(small_run["run"], gate)  # evaluate writes the gate's calibration into it
    argv = ["evaluate", "--run", str(run), "--split", "test", "--n-boot", "50"]
    assert main([*argv, "--gate", str(gate)]) == 0
    m = json.loads((run / "metrics_test.json").read_text())
    for key in ("rsna_map", "rsna_map_gated"):
        assert set(m[key]) == {"value", "ci", "n_images"}
    assert m["rsna_map_gated"]["n_images"] <= m["rsna_map"]["n_images"]
    d = m["gate_difference"]
    assert len(d["ci"]) == 2 and d["n_patients"] == m["n"]
    if m["rsna_map_gated"]["value"] is not None and m["rsna_map"]["value"] is not None:
        assert d["value"] == pytest.approx(m["rsna_map_gated"]["value"] - m["rsna_map"]["value"])
    assert m["gate"]["operating_point"] == "youden" and 0 <= m["gate"]["n_kept"] <= m["n"]
    assert "gated" in capsys.readouterr().out


def test_the_gate_on_a_classifier_run_is_refused_in_one_line(small_run, capsys):
    argv = ["evaluate", "--run", str(small_run["run"]), "--gate", str(small_run["run"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --gate") and "classifier run" in err[0]


def test_paired_difference_uses_the_same_resamples():
    truth = {"a": np.array([[0, 0, 10, 10]]), "b": np.zeros((0, 4)), "c": np.array([[5, 5, 4, 4]])}
    hit = (np.array([[0, 0, 10, 10]]), np.array([0.9]))
    none = (np.zeros((0, 4)), np.zeros(0))
    same = rsna_map_difference(truth, {"a": hit}, {"a": hit}, n_boot=50)
    assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0]
    d = rsna_map_difference(truth, {"a": hit}, {"a": none, "b": hit}, n_boot=50)
    assert d["value"] == pytest.approx(0.5 - 0.0)  # a: 1, c: 0 against a, b, c: 0
    assert d["ci"][0] <= d["value"] <= d["ci"][1]


def test_predict_on_a_detector_checkpoint_gives_boxes_per_file(
    detector, small_run, tmp_path, capsys
):
    files = sorted((small_run["raw"] / "stage_2_test_images").glob("*.dcm"))[:3]
    argv = ["predict", "--checkpoint", str(detector / "best.pt"), *map(str, files)]
    assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "file,PredictionString,top_confidence" and len(out) == 1 + len(files)
    assert main([*argv, "--cam", str(tmp_path / "maps")]) == 2  # no heat maps from boxes
    assert "detector checkpoint draws no heat maps" in capsys.readouterr().err


def test_submit_from_a_detector_run_writes_one_row_per_dicom(detector, small_run, tmp_path):
    images = small_run["raw"] / "stage_2_test_images"
    out = tmp_path / "submission.csv"
    argv = ["submit", "--run", str(detector), "--images", str(images), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    table = pd.read_csv(out, dtype={"patientId": str}, keep_default_na=False)
    assert list(table.columns) == ["patientId", "PredictionString"]
    assert sorted(table["patientId"]) == sorted(f.stem for f in images.glob("*.dcm"))
    for text in table["PredictionString"]:
        parse_prediction_string(text)  # Kaggle's form
    gate = tmp_path / "gate"  # a classifier run of the same films, calibrated on val
    shutil.copytree(small_run["run"], gate)
    assert main(["evaluate", "--run", str(gate), "--split", "val", "--n-boot", "20"]) == 0
    gated_out = tmp_path / "gated.csv"
    argv = ["submit", "--run", str(detector), "--images", str(images), "--out", str(gated_out)]
    assert main([*argv, "--gate", str(gate), "--device", "cpu"]) == 0
    gated = pd.read_csv(gated_out, dtype={"patientId": str}, keep_default_na=False)
    both = table.merge(gated, on="patientId", suffixes=("", "_gated"))
    assert len(both) == len(table)  # the same rows; a row keeps its boxes or loses them all
    kept = both["PredictionString_gated"] != ""
    assert (both.loc[kept, "PredictionString"] == both.loc[kept, "PredictionString_gated"]).all()


def test_compare_two_detector_runs_on_rsna_map(detector, tmp_path, capsys):
    blank = tmp_path / "blank"
    shutil.copytree(detector, blank)
    boxes = pd.read_csv(blank / "boxes_test.csv", dtype={"patientId": str}, keep_default_na=False)
    boxes.assign(PredictionString="").to_csv(blank / "boxes_test.csv", index=False)
    result = compare_runs([detector, blank], "test", n_boot=50)
    assert "runs" not in result  # detector runs have no predictions_<split>.csv
    runs, pair = result["box_runs"].set_index("run"), result["box_pairs"].iloc[0]
    assert runs.loc["blank", "rsna_map"] in (0.0,) or np.isnan(runs.loc["blank", "rsna_map"])
    if np.isfinite(runs.loc["blank", "rsna_map"]):
        assert pair["rsna_map_diff"] == pytest.approx(runs.loc["det", "rsna_map"])
    assert pair["rsna_map_diff_lo"] <= pair["rsna_map_diff"] <= pair["rsna_map_diff_hi"]
    assert "rsna_map" in comparison_text(result)
    assert main(["compare", "--run", str(detector), "--run", str(blank), "--n-boot", "20"]) == 0
    assert "det - blank: rsna_map" in capsys.readouterr().out
