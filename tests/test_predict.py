"""Tests for pneumolib.predict: scoring DICOM/PNG/JPEG files with a checkpoint, like the
cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumolib.base.errors import UsageError
from pneumolib.cli import main as cli_main
from pneumolib.data.dicom import read_dicom
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.raster import read_raster
from pneumolib.evaluate.run import evaluate_run, read_predictions
from pneumolib.predict import expand_inputs, predict_cli, predict_files

ROOT = Path(__file__).resolve().parents[1]
SAME_IMAGE = (  # decode to the same 8-bit image (the 12-bit one within one grey level)
    "cxr_pa_monochrome2_raw.dcm",
    "cxr_pa_monochrome1_raw.dcm",
    "cxr_pa_12bit_window.dcm",
)
JPEG = "cxr_pa_monochrome2_jpeg.dcm"
COLUMNS = [
    "file", "probability", "probability_raw", "positive", "in_distribution", "ood_score"
]  # fmt: skip
INVERTED = "cxr_pa_monochrome1_jpeg_relabelled.dcm"


@pytest.fixture(scope="module")
def run(small_run) -> dict:
    """A briefly trained demo run (64 px cache and input) and its raw DICOM folder (conftest's
    `small_run`, shared with test_evaluate.py; read-only)."""
    return small_run


def _dicoms(run: dict, n: int) -> list[Path]:
    return sorted((run["raw"] / "stage_2_train_images").glob("*.dcm"))[:n]


def _probs(df: pd.DataFrame) -> dict[str, float]:
    return {Path(f).name: p for f, p in zip(df["file"], df["probability"], strict=True)}


@pytest.mark.slow
def test_real_radiograph_variants_score_alike(run, real_dicom):
    files = [real_dicom / f for f in (*SAME_IMAGE, JPEG, INVERTED)]
    df, errors = predict_files(run["ckpt"], files, device="cpu")
    assert errors == []
    assert list(df.columns) == COLUMNS and len(df) == 5
    p = _probs(df)
    assert all(0.0 <= v <= 1.0 for v in p.values())
    same = np.array([p[f] for f in SAME_IMAGE])
    assert np.ptp(same) < 1e-4, p
    # The cache's reduced-scale JPEG decode is within one grey level of the full decode...
    assert abs(p[JPEG] - same[0]) < 2e-2, p
    # ...and with a full decode the JPEG is exactly the raw image, so the same probability.
    pair = [real_dicom / JPEG, real_dicom / INVERTED]
    full, _ = predict_files(run["ckpt"], pair, device="cpu", reduced=False)
    p_full = _probs(full)
    assert abs(p_full[JPEG] - same[0]) < 1e-4, (p_full, p)
    # The relabelled MONOCHROME1 file is the inverse image: a different probability.
    assert abs(p_full[INVERTED] - p_full[JPEG]) > 1e-3, p_full
    assert abs(p[INVERTED] - p[JPEG]) > 1e-3, p


@pytest.mark.slow
def test_predict_equals_validation_probabilities(run, tmp_path, capsys):
    """A DICOM scored by `predict` gets the calibrated and raw probabilities that evaluation
    gave its cache row, and `positive` at the run's val-chosen operating point; the checkpoint
    alone carries all of it (its folder's calibration.json)."""
    folder = Path(shutil.copytree(run["run"], tmp_path / "run"))  # evaluate writes there
    evaluate_run(folder, "val", n_boot=0, workers=0, device="cpu", n_samples=4)
    cal = json.loads((folder / "calibration.json").read_text())
    val = read_predictions(folder, "val").set_index("patientId")
    files = [run["raw"] / "stage_2_train_images" / f"{pid}.dcm" for pid in val.index]
    capsys.readouterr()
    for point in ("sens90", "youden"):
        df, errors = predict_files(
            folder / "best.pt", files, device="cpu", batch_size=7, operating_point=point
        )
        assert errors == [] and len(df) == len(val) and list(df.columns) == COLUMNS
        df.index = [Path(f).stem for f in df["file"]]
        got = df.loc[val.index]
        np.testing.assert_allclose(got["probability"], val["prob"], atol=1e-5)
        np.testing.assert_allclose(got["probability_raw"], val["prob_raw"], atol=1e-5)
        assert not np.allclose(got["probability"], got["probability_raw"], atol=1e-3)
        threshold = cal["operating_points"][point]
        assert (got["positive"] == (got["probability"] >= threshold)).all()
    assert "note:" not in capsys.readouterr().err  # calibrated: nothing to say
    # A calibration fitted on another checkpoint is not applied: raw, and one line says so.
    (folder / "calibration.json").write_text(json.dumps(cal | {"checkpoint_sha256": "0" * 64}))
    df, _ = predict_files(folder / "best.pt", files[:3], device="cpu", operating_point="0.3")
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "another checkpoint" in notes[0]
    np.testing.assert_array_equal(df["probability"], df["probability_raw"])
    assert (df["positive"] == (df["probability"] >= 0.3)).all()
    with pytest.raises(UsageError, match="--operating-point 'sens95'"):
        predict_files(folder / "best.pt", files[:1], device="cpu", operating_point="sens95")


@pytest.mark.slow
def test_png_and_jpeg_score_like_the_dicom(run, tmp_path):
    dcm = _dicoms(run, 1)[0]
    pixels = read_dicom(dcm).pixels  # uint8 (H, W), the DICOM's own pixels
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    cv2.imwrite(str(tmp_path / "b.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 100])
    colour = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)  # RGB export of a grey image
    cv2.imwrite(str(tmp_path / "c.PNG"), colour)
    # The PNGs hold the full-resolution pixels, so compare with the DICOM decoded at full scale
    # (the default reduced-scale JPEG decode may differ by one grey level at cache size).
    df, errors = predict_files(run["ckpt"], [dcm, tmp_path], device="cpu", reduced=False)
    assert errors == []
    p = _probs(df)
    assert p["a.png"] == pytest.approx(p[dcm.name], abs=1e-5)
    assert p["c.PNG"] == pytest.approx(p[dcm.name], abs=1e-5)
    assert p["b.jpg"] == pytest.approx(p[dcm.name], abs=2e-2)  # lossy, however fine


def test_read_raster_16_bit_and_letterbox(tmp_path):
    ramp = np.tile(np.linspace(1000, 4095, 50).astype(np.uint16), (30, 1))  # 12 bits in 16
    cv2.imwrite(str(tmp_path / "r.png"), ramp)
    img, chroma = read_raster(tmp_path / "r.png")
    assert chroma == 0.0 and img.dtype == np.uint8 and img.shape == (30, 50)
    assert img.min() == 0 and img.max() == 255  # own range -> 0..255, as DICOM without window
    assert np.all(np.diff(img[0].astype(int)) >= 0)


@pytest.mark.slow
def test_unreadable_file_is_reported_and_the_rest_scored(run, tmp_path, capsys):
    good = _dicoms(run, 2)
    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(b"not a dicom at all" * 10)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    flat = np.full((96, 96), 200, np.uint8)  # what a wrong window or LUT decodes to
    write_dicom(tmp_path / "flat.dcm", flat, patient_id="flat", jpeg=False)
    cv2.imwrite(str(tmp_path / "flat.png"), flat)
    files = [good[0], bad, broken, tmp_path / "flat.dcm", tmp_path / "flat.png", good[1]]
    out = tmp_path / "out" / "p.csv"
    code = predict_cli(
        run["ckpt"], [str(f) for f in files], out_csv=out, cam_dir=None, device="cpu"
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "garbage.dcm" in err and "broken.png" in err
    flat_lines = [line for line in err.splitlines() if "single grey level" in line]
    assert len(flat_lines) == 2 and "flat.dcm" in flat_lines[0] and "flat.png" in flat_lines[1]
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 4
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    assert df["file"].tolist() == [str(good[0]), str(good[1])]
    assert not list(out.parent.glob("*.tmp"))
    assert predict_cli(run["ckpt"], [str(good[0])], out_csv=out, cam_dir=None, device="cpu") == 0


@pytest.mark.slow
def test_cli_subprocess_boundary(run, tmp_path):
    good = _dicoms(run, 1)[0]
    bad = tmp_path / "bad.dcm"
    bad.write_text("garbage")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-m", "pneumolib", "predict", "--checkpoint", str(run["ckpt"])]
        + [str(good), str(bad), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    assert "bad.dcm" in res.stderr
    # A run never evaluated has no calibration.json: raw scores, and one line says so.
    assert res.stderr.count("calibration.json not found") == 1
    lines = res.stdout.strip().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 2
    assert lines[1].startswith(str(good) + ",")
    _, p, p_raw, positive, in_distribution, ood_score = lines[1].rsplit(",", 5)
    assert 0.0 <= float(p) <= 1.0 and p == p_raw
    assert positive == str(float(p) >= 0.5)  # no operating points without calibration
    # Nor a learned check: a demo film passes the image checks, its ood_score stays empty.
    assert in_distribution == "True" and ood_score == ""
    assert res.stderr.count("ood.npz not found") == 1


def test_bad_checkpoint_is_a_one_line_error(tmp_path, capsys):
    fake = tmp_path / "fake.pt"
    fake.write_text("nope")
    assert cli_main(["predict", "--checkpoint", str(fake), str(fake)]) == 2
    err = capsys.readouterr().err.strip()
    assert "fake.pt" in err and len(err.splitlines()) == 1


def test_folders_and_globs_expand(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.dcm", "a/deep/y.PNG", "a/deep/z.jpeg", "a/notes.txt", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    files, errors = expand_inputs(
        [tmp_path / "a", str(tmp_path / "*.png"), str(tmp_path / "a" / "x.dcm"), tmp_path / "empty"]
        + [str(tmp_path / "nothing.dcm"), str(tmp_path / "*.gif")]
    )
    names = [f.relative_to(tmp_path).as_posix() for f in files]
    assert names == ["a/deep/y.PNG", "a/deep/z.jpeg", "a/x.dcm", "c.png"]  # x.dcm once
    assert len(errors) == 3
    assert any("empty" in e and "no .dcm" in e for e in errors)
    assert any("nothing.dcm" in e for e in errors) and any("*.gif" in e for e in errors)


@pytest.mark.slow
def test_cam_overlays_per_file(run, tmp_path):
    src = _dicoms(run, 2)
    for sub in ("one", "two"):  # same file name in two folders -> two overlays
        (tmp_path / sub).mkdir()
        shutil.copy(src[0], tmp_path / sub / "same.dcm")
    inputs = [str(tmp_path / "*" / "same.dcm"), src[1]]
    cam_dir = tmp_path / "cams"
    with_cam, errors = predict_files(run["ckpt"], inputs, device="cpu", cam_dir=cam_dir)
    plain, _ = predict_files(run["ckpt"], inputs, device="cpu")
    assert errors == []
    pngs = sorted(p.name for p in cam_dir.glob("*.png"))
    assert pngs == sorted(["same.png", "same_2.png", f"{src[1].stem}.png"])
    assert all(cv2.imread(str(cam_dir / n)) is not None for n in pngs)
    np.testing.assert_allclose(with_cam["probability"], plain["probability"], atol=1e-5)


def test_model_input_cpu_and_device_warps_agree():
    """The cv2 (loader worker) and grid_sample (GPU) warps give the same network input,
    up to the cv2 path's rounding to whole grey levels."""
    import torch

    from pneumolib.core.augment import eval_affines
    from pneumolib.core.runtime import model_input
    from pneumolib.data.cache_stats import CacheStats

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    images = cv2.GaussianBlur(images.transpose(1, 2, 0), (5, 5), 2).transpose(2, 0, 1).copy()
    stats = CacheStats(mean=0.5, std=0.25, size=64)
    mats = eval_affines(3, 64, 48)
    cpu = model_input(
        images, mats, size=48, stats=stats, device=torch.device("cpu"), warp_on_device=False
    )
    dev = model_input(
        images, mats, size=48, stats=stats, device=torch.device("cpu"), warp_on_device=True
    )
    assert cpu.shape == dev.shape == (3, 1, 48, 48) and cpu.dtype == torch.float32
    assert (cpu - dev).abs().max() <= 1.0 / 255 / 0.25 + 1e-5
    assert abs(float(cpu.mean()) - (images.mean() / 255 - 0.5) / 0.25) < 0.05
