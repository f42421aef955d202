"""Tests for pneumolib.evaluate.ood, the learned out-of-distribution check, and how `evaluate`
fits it and `predict` applies it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.synth import make_demo_data
from pneumolib.evaluate.ood import QUANTILE, fit_ood, read_ood, write_ood
from pneumolib.evaluate.run import evaluate_run
from pneumolib.predict import predict_files


def test_fit_flags_far_points_and_few_held_out() -> None:
    rng = np.random.default_rng(0)
    d = 64  # more features than a small train set has images per class: shrinkage needed
    scale = rng.uniform(0.5, 2.0, d)

    def sample(n: int, shift: float) -> np.ndarray:
        return rng.normal(shift, 1.0, (n, d)) * scale

    train = np.concatenate([sample(40, 0.0), sample(40, 1.0)])
    classes = np.repeat([0, 1], 40)
    stats = fit_ood(train, classes, sample(200, 0.0), checkpoint_sha256="abc")
    assert stats.means.shape == (2, d) and stats.precision.shape == (d, d)
    held_out = np.concatenate([sample(500, 0.0), sample(500, 1.0)])
    assert np.mean(stats.score(held_out) > 1.0) <= 0.05
    far = sample(50, 6.0)  # every feature shifted: another kind of image
    assert np.all(stats.score(far) > 1.0)
    # The distance is to the nearest class mean: each class's own points are near.
    assert np.median(stats.distance(sample(100, 1.0))) < stats.threshold


def test_stats_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stats = fit_ood(rng.normal(size=(30, 8)), np.zeros(30), rng.normal(size=(20, 8)),
                    checkpoint_sha256="f" * 64)  # fmt: skip
    write_ood(tmp_path, stats)
    back = read_ood(tmp_path)
    assert back is not None and back.checkpoint_sha256 == "f" * 64
    assert back.quantile == QUANTILE and back.n_train == 30 and back.n_val == 20
    x = rng.normal(size=(5, 8))
    np.testing.assert_allclose(back.score(x), stats.score(x))
    (tmp_path / "ood.npz").write_bytes(b"not an npz")
    assert read_ood(tmp_path) is None  # damaged: scored as a run without it


# --- inputs that are not chest films, made here -----------------------------------------


def _non_chest(folder: Path) -> dict[str, Path]:
    """One file per kind of input a chest-film model must not vouch for."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:240, 0:320]
    photo = np.stack([xx * 255 // 320, yy * 255 // 240, 255 - xx * 255 // 320], -1)
    photo = np.clip(photo + rng.normal(0, 20, photo.shape), 0, 255).astype(np.uint8)
    bars = np.zeros((240, 320), np.uint8)
    for i, level in enumerate((235, 200, 170, 145, 105, 80, 50, 16)):
        bars[:, i * 40 : (i + 1) * 40] = level  # a test pattern's bars, in grey
    face = np.full((400, 300), 200, np.uint8)
    cv2.ellipse(face, (150, 200), (100, 140), 0, 0, 360, 120, -1)
    for x in (110, 190):
        cv2.circle(face, (x, 170), 15, 30, -1)
    cv2.ellipse(face, (150, 270), (40, 15), 0, 0, 180, 40, 4)
    ct = np.zeros((256, 256), np.uint8)  # an axial slice: body, two lungs, the spine
    cv2.circle(ct, (128, 128), 110, 90, -1)
    for x in (90, 166):
        cv2.ellipse(ct, (x, 128), (30, 55), 0, 0, 360, 10, -1)
    cv2.circle(ct, (128, 170), 12, 230, -1)
    kinds = {
        "colour_photo.png": photo,
        "grey_noise.png": rng.integers(0, 256, (300, 300), dtype=np.uint8),
        "test_pattern.png": bars,
        "face.png": face,
        "ct_slice.png": ct,
        "tiny.png": rng.integers(0, 256, (32, 32), dtype=np.uint8),
    }
    paths = {}
    for name, img in kinds.items():
        cv2.imwrite(str(folder / name), img)
        paths[name] = folder / name
    paths["ct_slice.dcm"] = folder / "ct_slice.dcm"
    write_dicom(paths["ct_slice.dcm"], ct, patient_id="ct", jpeg=False)
    return paths


@pytest.fixture(scope="module")
def evaluated(small_run, tmp_path_factory) -> Path:
    """A copy of the small demo run, evaluated on test (fits calibration and the check)."""
    run = tmp_path_factory.mktemp("ood") / "run"
    shutil.copytree(small_run["run"], run)
    evaluate_run(run, "test", device="cpu", cache=small_run["cache"], n_boot=50,
                 figures=False, print_table=False)  # fmt: skip
    return run


@pytest.mark.slow
def test_evaluate_fits_the_check_and_reports_test_flagged(evaluated) -> None:
    stats = read_ood(evaluated)
    assert stats is not None and stats.quantile == QUANTILE
    block = json.loads((evaluated / "metrics_test.json").read_text())["ood"]
    assert block["quantile"] == QUANTILE and block["n"] > 0
    assert 0.0 <= block["flagged"] <= 0.05
    card = (evaluated / "MODEL_CARD.md").read_text()
    assert f"{block['flagged']:.1%} of films are flagged by the learned check" in card


@pytest.mark.slow
def test_check_passes_held_out_films_and_flags_every_kind(evaluated, tmp_path) -> None:
    fresh = make_demo_data(tmp_path / "fresh", n=60, size=128, seed=11)  # never seen
    films = sorted((fresh / "stage_2_train_images").glob("*.dcm"))
    odd = _non_chest(tmp_path / "odd")
    df, errors = predict_files(evaluated / "best.pt", [*films, *odd.values()], device="cpu")
    assert errors == []
    score = dict(zip(df["file"].map(lambda f: Path(f).name), df["ood_score"], strict=True))
    held_out = np.array([score[f.name] for f in films])
    assert np.mean(held_out > 1.0) <= 0.05, held_out
    for name in odd:  # the learned check alone flags each kind
        assert score[name] > 1.0, (name, score[name])
    flagged = df[~df["in_distribution"]]
    assert set(flagged["file"].map(lambda f: Path(f).name)) >= set(odd)
    assert flagged["positive"].isna().all() and flagged["probability"].notna().all()
