"""pneumolib.evaluate.card: every number on a model card equals the run's own files (read back out
of the
Markdown); missing files are named, not fatal; provenance flows from the demo folder through the
cache and the checkpoint to the card's bold line and predict's warning."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from card_check import (  # tests/ on sys.path
    check_card_against_run,
    same,
    sections,
    subsections,
    tables,
)
from sklearn.metrics import roc_auc_score

from pneumolib.base.config import demo_config
from pneumolib.base.rundir import CARD
from pneumolib.cam.localisation import summarize_localisation
from pneumolib.cli import main
from pneumolib.data.labels import CacheStats, read_index
from pneumolib.data.preprocess import build_cache
from pneumolib.data.provenance import PROVENANCE_JSON, SYNTHETIC_MANUFACTURER, is_synthetic
from pneumolib.evaluate.card import write_card
from pneumolib.evaluate.run import evaluate_predictions
from pneumolib.predict import synthetic_warning

ROOT = Path(__file__).resolve().parents[2]
from card_check import BOLD_SYNTHETIC


# --------------------------------------------------------------------------- reading a card
def _predictions(index: pd.DataFrame, split: str, seed: int) -> pd.DataFrame:
    """A predictions table of the cache's `split` rows, scores that favour the positives."""
    rows = index[index["split"] == split].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    prob = np.clip(0.35 + 0.3 * rows["target"] + rng.normal(0, 0.2, len(rows)), 0, 1)
    return rows[["patientId", "target", "view", "sex", "age"]].assign(prob=prob)


def _fake_run(root: Path, cache: Path, *, test: bool = True) -> Path:
    """A run folder as train, evaluate and cam leave it, without training: config.json,
    metrics.csv, a stand-in best.pt, metrics_val/test.json from `evaluate_predictions` (with
    the checkpoint hash `evaluate_run` adds) and a cam_test.json from `summarize_localisation`."""
    run = root / "run"
    run.mkdir(parents=True)
    demo_config(root, cache=str(cache), out=str(run), epochs=4).save(run / "config.json")
    hist = {"epoch": [1, 2, 3], "val_auc": [0.6, 0.7, 0.65], "seconds": [1.26, 2.5, 3.125]}
    pd.DataFrame(hist).assign(val_loss=0.5).to_csv(run / "metrics.csv", index=False)
    (run / "best.pt").write_bytes(b"not a real checkpoint")
    sha = hashlib.sha256(b"not a real checkpoint").hexdigest()
    index = read_index(cache)
    val = _predictions(index, "val", 0)
    kw = {"out_dir": run, "n_boot": 200, "figures": False}
    evaluate_predictions(val, val, split="val", **kw)
    if test:
        evaluate_predictions(val, _predictions(index, "test", 1), split="test", **kw)
    for path in run.glob("metrics_*.json"):
        m = json.loads(path.read_text()) | {"checkpoint": {"path": "best.pt", "sha256": sha}}
        path.write_text(json.dumps(m))
    scores = pd.DataFrame(
        {"pointing_hit": [1.0, 0.0, 1.0, 1.0], "energy_in_box": [0.5, 0.1, 0.7, 0.4]}
    ).assign(box_area_fraction=[0.1, 0.05, 0.2, 0.1])
    loc = {"split": "test", "method": "gradcam", "layer": "layer2", "threshold": 0.5}
    (run / "cam_test.json").write_text(json.dumps(loc | summarize_localisation(scores, 100)))
    return run


@pytest.fixture(scope="module")
def fake_run(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_run(tmp_path_factory.mktemp("card"), demo_cache)


def test_every_number_on_the_card_is_the_run_files(fake_run: Path) -> None:
    assert write_card(fake_run) == fake_run / CARD
    card = check_card_against_run(fake_run)
    for title in ("Model details", "Intended use", "Training and evaluation data", "Metrics"):
        assert f"\n## {title}\n" in card
    for title in ("Calibration", "Subgroups (factors)", "Localisation against the expert boxes"):
        assert f"\n## {title}\n" in card
    for title in ("Ethical considerations", "Caveats and recommendations"):
        assert f"\n## {title}\n" in card
    assert card.index(BOLD_SYNTHETIC) < card.index("## Model details")  # at the top
    assert "not a medical device" in card and "AP/PA confound" in card
    assert "Not measured (" not in card and "another checkpoint" not in card
    # The confound's figures: prevalence per view from index.csv, AUC per view from metrics.
    index = read_index(json.loads((fake_run / "config.json").read_text())["cache"])
    prev = index.groupby("view")["target"].mean()
    assert f"AP films are positive {prev['AP']:.3f} of the time against {prev['PA']:.3f}" in card
    assert not list(fake_run.glob("*.tmp"))


def test_card_is_written_without_torch(fake_run: Path) -> None:
    code = (
        "import sys; from pneumolib.evaluate.card import write_card; "
        f"write_card({str(fake_run)!r}); print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_card_flags_metrics_of_another_checkpoint(fake_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    (run / "best.pt").write_bytes(b"trained further since")
    assert "computed on another checkpoint" in write_card(run).read_text()


def test_missing_files_say_what_was_not_measured(demo_cache: Path, tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "a", demo_cache, test=False)
    (run / "cam_test.json").unlink()
    write_card(run)
    card = check_card_against_run(run)
    assert f"`python -m pneumolib evaluate --run {run} --split test`" in card
    assert f"`python -m pneumolib cam --run {run} --split test`" in card
    assert "test metrics (no metrics_test.json)" in sections(card)["Caveats and recommendations"]
    assert "On val:" in sections(card)["Calibration"]  # falls back to val

    bare = tmp_path / "b" / "run"  # config.json only, its cache gone
    bare.mkdir(parents=True)
    demo_config(tmp_path / "b", cache=str(tmp_path / "gone")).save(bare / "config.json")
    card = write_card(bare).read_text()
    assert BOLD_SYNTHETIC not in card and "provenance not recorded" in card
    assert f"The cache `{tmp_path / 'gone'}` is not there" in card
    assert "not trained yet" in card and "no best.pt" in card
    assert card.count("Not measured (") == 4  # metrics, calibration, subgroups, localisation


def test_not_a_run_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_card(tmp_path)
    assert main(["card", "--run", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "config.json" in err and len(err.splitlines()) == 1


def test_card_command(fake_run: Path, capsys) -> None:
    (fake_run / CARD).unlink(missing_ok=True)
    assert main(["card", "--run", str(fake_run)]) == 0
    assert capsys.readouterr().out.strip() == f"model card: {fake_run / CARD}"
    check_card_against_run(fake_run)


def test_three_class_figures(fake_run: Path, tmp_path: Path) -> None:
    from pneumolib.evaluate.multiclass import three_class_metrics

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60) + np.eye(3)[y]  # leaning to the true class
    tc = three_class_metrics(y, probs / probs.sum(1, keepdims=True), n_boot=100)
    classes = tc["classes"]
    path = run / "metrics_test.json"
    m = json.loads(path.read_text()) | {"task": "three-class", "three_class": tc}
    path.write_text(json.dumps(m))
    metrics = sections(write_card(run).read_text())["Metrics"]
    text = subsections(metrics)["test (thresholds chosen on val)"]
    same(re.search(r"Macro F1 ([^;]+);", text)[1], tc["macro_f1"], tc["macro_f1_ci"])
    same(re.search(r"most probable class ([^;]+);", text)[1], tc["accuracy"])
    per_class, confusion = tables(text)[1:]
    for row, c in zip(per_class, classes, strict=True):
        assert row["class"] == c and int(row["patients"]) == tc["n_per_class"][c]
        same(row["AUC one-vs-rest [95% CI]"], tc["auc_ovr"][c], tc["auc_ovr_ci"][c])
    assert [[int(r[c]) for c in classes] for r in confusion] == tc["confusion"]
    assert [r["true \\ predicted"] for r in confusion] == classes


# --------------------------------------------------------------------------- provenance
def test_demo_folder_is_marked_synthetic(demo_raw: Path) -> None:
    assert json.loads((demo_raw / PROVENANCE_JSON).read_text())["synthetic"] is True
    assert is_synthetic(demo_raw)
    first = next((demo_raw / "stage_2_train_images").glob("*.dcm"))
    assert pydicom.dcmread(first, stop_before_pixels=True).Manufacturer == SYNTHETIC_MANUFACTURER


def test_cache_records_provenance(demo_raw: Path, demo_cache: Path, tmp_path: Path) -> None:
    assert json.loads((demo_cache / "stats.json").read_text())["synthetic"] is True
    plain = tmp_path / "raw"  # the same files without the demo's markers: not synthetic
    shutil.copytree(demo_raw, plain)
    for name in (PROVENANCE_JSON, "demo_params.json"):
        (plain / name).unlink()
    assert not is_synthetic(plain)
    cache = build_cache(plain, tmp_path / "cache", size=32, workers=1, progress=False)
    assert json.loads((cache / "stats.json").read_text())["synthetic"] is False
    (plain / PROVENANCE_JSON).write_text("[1, 2]")  # a marker that is not an object: refused
    with pytest.raises(ValueError, match=PROVENANCE_JSON):
        is_synthetic(plain)


def test_checkpoint_and_predict_carry_provenance(tmp_path: Path) -> None:
    stats = CacheStats(mean=0.4, std=0.2, size=64)
    assert replace(stats, synthetic=True).for_checkpoint()["synthetic"] is True
    assert stats.for_checkpoint()["synthetic"] is None  # a cache from before the record
    line = synthetic_warning("run/best.pt", replace(stats, synthetic=True))
    assert line.startswith("warning: run/best.pt") and "synthetic" in line and "\n" not in line
    assert synthetic_warning("x", replace(stats, synthetic=False)) is None
    assert synthetic_warning("x", stats) is None


def test_card_reads_provenance_from_the_checkpoint_when_the_cache_is_gone(tmp_path: Path) -> None:
    import torch

    run = tmp_path / "run"
    run.mkdir()
    demo_config(tmp_path, cache=str(tmp_path / "gone")).save(run / "config.json")
    stats = CacheStats(mean=0.5, std=0.2, size=8, synthetic=True).for_checkpoint()
    torch.save({"model": {}, "stats": stats}, run / "best.pt")
    card = write_card(run).read_text()
    assert card.index(BOLD_SYNTHETIC) < card.index("## Model details")
    assert "read from best.pt" in card


# --------------------------------------------------------------------------- a trained run
@pytest.mark.slow
def test_trained_run_card_and_predict_warning(
    demo_raw: Path, demo_run: Path, tmp_path: Path, capsys
) -> None:
    """The whole chain on a real tiny run: demo folder -> cache -> checkpoint -> predict's
    warning; evaluate (val, test) and cam -> a card whose every number is the files'."""
    from pneumolib.cam.run import cam_run
    from pneumolib.core.checkpoint import load_checkpoint
    from pneumolib.evaluate.run import evaluate_run
    from pneumolib.predict import predict_cli

    # conftest's demo_run: the demo preset on demo_cache, 64 px, 2 epochs (copied: written to)
    run = Path(shutil.copytree(demo_run, tmp_path / "run"))
    assert load_checkpoint(run / "best.pt")["stats"]["synthetic"] is True

    dicom = next((demo_raw / "stage_2_train_images").glob("*.dcm"))
    capsys.readouterr()
    assert predict_cli(run / "best.pt", [str(dicom)], device="cpu") == 0
    out, err = capsys.readouterr()
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == [
        synthetic_warning(run / "best.pt", CacheStats(mean=0.5, std=0.25, size=64, synthetic=True))
    ]
    assert out.splitlines()[0].startswith("file,probability,probability_raw,positive,")
    assert len(out.splitlines()) == 2

    for split in ("val", "test"):
        evaluate_run(run, split, n_boot=200, device="cpu", figures=False, print_table=False)
    # Calibration fitted on val and stored for best.pt; the ranking untouched. (With 9 val
    # patients, 1 positive, nothing is claimed about ECE here: benchmarks/calibration_seeds.py
    # measures that on the demo's 500 patients.)
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["checkpoint_sha256"] == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    block = json.loads((run / "metrics_test.json").read_text())["calibration"]
    assert block["method"] == saved["method"] == "platt"  # the binary task's default
    pred = pd.read_csv(run / "predictions_test.csv")
    auc = [roc_auc_score(pred["target"], pred[c]) for c in ("prob", "prob_raw")]
    assert auc[0] == auc[1]
    cam_run(run, "test", n_overlays=1, n_boot=100, device="cpu", progress=False)
    write_card(run)
    card = check_card_against_run(run)
    assert card.startswith(f"# Model card: run\n\n{BOLD_SYNTHETIC}")
