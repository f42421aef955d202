"""Tests for pneumolib.submit: Kaggle's submission file from a classifier run's CAM boxes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pneumolib.base.errors import UsageError
from pneumolib.cam.run import cam_run
from pneumolib.cli import main as cli_main
from pneumolib.data.dicom import read_dicom
from pneumolib.evaluate.boxes import parse_prediction_string
from pneumolib.submit import HEADER, submission_files, submit


@pytest.fixture(scope="module")
def boxed_run(small_run, tmp_path_factory) -> Path:
    """A copy of the small demo run with its CAM box rule fitted on val."""
    run = tmp_path_factory.mktemp("submit") / "run"
    shutil.copytree(small_run["run"], run)
    cam_run(run, "val", n_overlays=0, n_boot=20, device="cpu", cache=small_run["cache"],
            progress=False)  # fmt: skip
    assert (run / "box_rule.json").is_file()
    return run


@pytest.mark.slow
def test_submit_writes_kaggles_file_for_the_demo_test_folder(boxed_run, small_run, tmp_path):
    images = small_run["raw"] / "stage_2_test_images"
    dicoms = sorted(images.glob("*.dcm"))
    out = tmp_path / "sub" / "submission.csv"
    table = submit(boxed_run, images, out, device="cpu", progress=False)
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written.columns) == list(HEADER) and len(written) == len(dicoms) > 0
    assert sorted(written["patientId"]) == sorted(f.stem for f in dicoms)
    assert table["patientId"].tolist() == written["patientId"].tolist()
    for pid, text in zip(written["patientId"], written["PredictionString"], strict=True):
        boxes, scores = parse_prediction_string(text)  # every row parses
        d = read_dicom(images / f"{pid}.dcm")
        assert ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0)).all()
        assert (boxes[:, 0] + boxes[:, 2] <= d.columns + 0.5).all()
        assert (boxes[:, 1] + boxes[:, 3] <= d.rows + 0.5).all()
        assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.slow
def test_gate_keeps_only_images_the_classifier_calls_positive(boxed_run, small_run, tmp_path):
    images = small_run["raw"] / "stage_2_test_images"
    plain = submit(boxed_run, images, tmp_path / "a.csv", device="cpu", progress=False)
    gated = submit(boxed_run, images, tmp_path / "b.csv", gate=boxed_run, device="cpu",
                   progress=False)  # fmt: skip
    assert gated["patientId"].tolist() == plain["patientId"].tolist()
    kept = gated["PredictionString"] != ""
    assert (plain["PredictionString"][kept] == gated["PredictionString"][kept]).all()


def test_a_folder_without_dicoms_or_with_a_repeated_id_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no .dcm"):
        submission_files(tmp_path / "empty")
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(UsageError, match="holds no DICOM files"):
        submission_files(tmp_path / "pngs")


@pytest.mark.slow
def test_an_unreadable_file_stops_it_and_nothing_is_written(boxed_run, small_run, tmp_path,
                                                           capsys):  # fmt: skip
    images = tmp_path / "test_images"
    shutil.copytree(small_run["raw"] / "stage_2_test_images", images)
    (images / "broken.dcm").write_bytes(b"not a dicom" * 20)
    out = tmp_path / "submission.csv"
    code = cli_main(["submit", "--run", str(boxed_run), "--images", str(images),
                     "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert code != 0 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "broken.dcm" in err[-1]


@pytest.mark.slow
def test_a_dicomdir_is_skipped(boxed_run, small_run, tmp_path):
    from pydicom.fileset import FileSet

    src = sorted((small_run["raw"] / "stage_2_test_images").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20200101", "120000", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.save_as(tmp_path / "film.dcm")
    fs = FileSet()
    fs.add(pydicom.dcmread(tmp_path / "film.dcm"))
    fs.write(tmp_path / "export")
    table = submit(boxed_run, tmp_path / "export", tmp_path / "s.csv", device="cpu",
                   progress=False)  # fmt: skip
    assert len(table) == 1 and "DICOMDIR" not in table["patientId"].tolist()
