"""pneumolib.evaluate.run: thresholds from val applied to test, metrics files, figures, whole runs.

The metric definitions themselves are tested in test_metrics.py (whose helpers make the
synthetic prediction tables used here too)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from predictions_data import table as _table
from sklearn import metrics as skm

from pneumolib.base import metrics
from pneumolib.evaluate import run as ev


def test_test_split_uses_val_thresholds_unchanged(tmp_path):
    val = _table(600, seed=10)
    test = _table(600, seed=11, shift=1.5)  # shifted scores: re-tuning would move thresholds
    thr = metrics.choose_thresholds(val["target"], val["prob"])
    assert metrics.choose_thresholds(test["target"], test["prob"])["youden"] != thr["youden"]
    m = ev.evaluate_predictions(val, test, split="test", out_dir=tmp_path, n_boot=50, figures=False)
    assert m["threshold_source"] == "val"
    assert {k: v["threshold"] for k, v in m["thresholds"].items()} == thr
    for name, t in thr.items():
        hat = test["prob"].to_numpy() >= t
        tn, fp, fn, tp = skm.confusion_matrix(test["target"], hat).ravel()
        got = m["thresholds"][name]
        assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    on_disk = json.loads((tmp_path / "metrics_test.json").read_text())
    assert on_disk["thresholds"]["youden"]["threshold"] == thr["youden"]
    # Without validation predictions, test gets 0.5 only: it never tunes on itself.
    alone = ev.evaluate_predictions(
        None, test, split="test", out_dir=tmp_path / "b", n_boot=20, figures=False
    )
    assert alone["threshold_source"] == "fixed" and list(alone["thresholds"]) == ["0.5"]


# --------------------------------------------------------------------------- outputs
def test_evaluate_predictions_writes_json_and_figures(tmp_path):
    val, test = _table(300, seed=13), _table(300, seed=14)
    ev.evaluate_predictions(val, test, split="test", out_dir=tmp_path, n_boot=100)
    text = (tmp_path / "metrics_test.json").read_text()
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert on_disk["roc_auc"] == pytest.approx(skm.roc_auc_score(test["target"], test["prob"]))
    assert on_disk["split"] == "test" and len(on_disk["subgroups"]) > 0
    assert len(on_disk["roc_auc_ci"]) == 2 and len(on_disk["reliability"]) == 10
    kinds = ("roc", "pr", "confusion", "reliability", "prob_hist", "subgroups")
    for kind in kinds:
        png = tmp_path / "figures" / f"{kind}_test.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
    assert not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------------------------- a whole run
PRED_COLUMNS = ["patientId", "prob", "target", "view", "sex", "age", "prob_raw"]


@pytest.fixture(scope="module")
def trained_run(small_run):
    """A demo run trained briefly on a 64 px cache (stratified train/val/test): conftest's
    `small_run`, shared with test_predict.py (read-only; `_fresh_run` copies what it needs)."""
    return small_run


def _fresh_run(trained_run, tmp_path):
    """A copy of the trained run's checkpoint and config only (no predictions yet)."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "config.json"):
        shutil.copy(trained_run["run"] / name, run / name)
    return run


def _json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_evaluate_run_val_writes_predictions_metrics_and_figures(trained_run, tmp_path, capsys):
    from pneumolib.cli import main
    from pneumolib.data.labels import read_index

    run = _fresh_run(trained_run, tmp_path)
    assert main(["evaluate", "--run", str(run), "--split", "val", "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "youden" in out
    pred = pd.read_csv(run / "predictions_val.csv", dtype={"patientId": str})
    assert list(pred.columns) == PRED_COLUMNS
    index = read_index(trained_run["cache"])
    val = index[index["split"] == "val"]
    assert sorted(pred["patientId"]) == sorted(val["patientId"])
    truth = val.set_index("patientId").loc[pred["patientId"], "target"].to_numpy()
    assert np.array_equal(pred["target"].to_numpy(), truth)
    assert pred["prob"].between(0, 1).all() and pred["prob"].nunique() > 1
    saved = _json(run / "metrics_val.json")
    assert saved["roc_auc"] == pytest.approx(skm.roc_auc_score(pred["target"], pred["prob"]))
    assert saved["n_boot"] == 100 and saved["roc_auc_ci"][0] <= saved["roc_auc"]
    assert saved["split_rule"] == "stratified" and saved["reference_comparable"] is False
    assert [r["source"] for r in saved["reference"]][1:] == ["course checkpoint", "tuned blog"]
    assert "not like for like" in saved["reference_note"]
    for kind in ("roc", "pr", "confusion", "reliability", "prob_hist", "samples"):
        assert (run / "figures" / f"{kind}_val.png").stat().st_size > 1000, kind
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_evaluate_run_test_uses_val_thresholds_unchanged(trained_run, tmp_path, capsys):
    run = _fresh_run(trained_run, tmp_path)
    ev.evaluate_run(
        run, "test", n_boot=50, workers=0, device="cpu", figures=False
    )  # val predicted first
    val_pred = pd.read_csv(run / "predictions_val.csv")
    chosen = metrics.choose_thresholds(val_pred["target"], val_pred["prob"])
    test = _json(run / "metrics_test.json")
    assert {k: v["threshold"] for k, v in test["thresholds"].items()} == pytest.approx(chosen)
    assert test["threshold_source"] == "val" and "reference" not in test
    test_pred = pd.read_csv(run / "predictions_test.csv")
    assert list(test_pred.columns) == PRED_COLUMNS
    assert metrics.choose_thresholds(test_pred["target"], test_pred["prob"]) != chosen
    ev.evaluate_run(run, "val", n_boot=50, workers=0, device="cpu", figures=False)
    val = _json(run / "metrics_val.json")
    for name, t in test["thresholds"].items():
        assert val["thresholds"][name]["threshold"] == t["threshold"]
    # A second test evaluation reuses the val predictions of the same checkpoint...
    capsys.readouterr()
    ev.evaluate_run(
        run, "test", n_boot=50, workers=0, device="cpu", figures=False, print_table=False
    )
    out = capsys.readouterr().out
    assert "reusing predictions_val.csv" in out and "AUC" in out
    assert "youden" not in out  # the notebook shows the table itself: printed once
    # ...but not ones whose sidecar names another checkpoint.
    meta = run / "predictions_val.meta.json"
    meta.write_text(meta.read_text().replace(test["checkpoint"]["sha256"], "0" * 64))
    ev.evaluate_run(run, "test", n_boot=50, workers=0, device="cpu", figures=False)
    assert "reusing" not in capsys.readouterr().out
    assert test["checkpoint"]["sha256"] in meta.read_text()


@pytest.mark.slow
def test_evaluate_run_tta_close_to_plain(trained_run, tmp_path):
    run = _fresh_run(trained_run, tmp_path)
    kw = {"n_boot": 20, "workers": 0, "device": "cpu", "figures": False}
    plain = ev.evaluate_run(run, "val", **kw)
    tta = ev.evaluate_run(run, "val", tta=True, **kw)
    a = pd.read_csv(run / "predictions_val.csv")
    b = pd.read_csv(run / "predictions_val_tta.csv")
    assert list(b.columns) == PRED_COLUMNS and (a["patientId"] == b["patientId"]).all()
    assert b["prob"].between(0, 1).all()
    assert not np.allclose(a["prob"], b["prob"])  # the variants did change something
    assert np.corrcoef(a["prob"], b["prob"])[0, 1] > 0.9
    assert (
        tta["tta"] is True and len(tta["tta_variants"]) == 7 and "hflip" not in tta["tta_variants"]
    )
    assert plain["tta"] is False and (run / "metrics_val_tta.json").is_file()
    assert not (run / "figures").exists()  # figures=False


def test_tta_affines_identity_is_the_eval_resize():
    from pneumolib.core.augment import eval_affines

    mats = ev.tta_affines(64, 48)
    np.testing.assert_allclose(mats["identity"], eval_affines(1, 64, 48)[0])
    assert "hflip" not in mats and "hflip" in ev.tta_affines(64, 48, hflip=True)
    # x+4% moves every output pixel 4% of the side to the right.
    np.testing.assert_allclose(mats["x+4%"][:, 2] - mats["identity"][:, 2], [0.04 * 48, 0])
    assert mats["zoom 1.05"][0, 0] == pytest.approx(1.05 * 48 / 64)


@pytest.mark.slow
def test_evaluate_run_bad_inputs(trained_run, tmp_path, capsys):
    from pneumolib.cli import main

    assert main(["evaluate", "--run", str(tmp_path / "nowhere")]) == 2
    assert "best.pt" in capsys.readouterr().err
    run = _fresh_run(trained_run, tmp_path)
    with pytest.raises(ValueError, match="split"):
        ev.evaluate_run(run, "train")
    with pytest.raises(FileNotFoundError, match="index.csv"):
        ev.evaluate_run(run, "val", cache=tmp_path / "no_cache")
