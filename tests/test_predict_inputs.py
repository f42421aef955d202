"""pneumolib.predict's inputs as hospitals hand them over: files found by content whatever their
name, and one warning line for a DICOM that is not a chest radiograph (still scored)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.film import read_film
from pneumolib.predict import expand_inputs, predict_cli


def ramp(n: int = 64) -> np.ndarray:
    """uint8 (n, n) over 0..255, not symmetric."""
    img = (np.add.outer(np.arange(n) * 3, np.arange(n) * 5) % 256).astype(np.uint8)
    img[-1, -1] = 255
    return img


def dicom(path: Path, *, modality: str = "CR", body_part: str = "CHEST", preamble: bool = True):
    """A small uncompressed DICOM at `path` with that Modality and BodyPartExamined."""
    write_dicom(path, ramp(), patient_id=path.name, jpeg=False)
    ds = pydicom.dcmread(path)
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.save_as(path)
    if not preamble:  # as some PACS write them: no 128-byte preamble, no 'DICM'
        path.write_bytes(path.read_bytes()[132:])
    return path


def test_folder_search_finds_images_by_content(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "SERIES1").mkdir(parents=True)
    dicom(folder / "SERIES1" / "IM0001", preamble=False)
    dicom(folder / "SERIES1" / "1.2.840.113619.2.1.7")  # named by its UID: suffix '.7'
    dicom(folder / "a.dcm")
    cv2.imwrite(str(folder / "scan.png"), ramp())
    shutil.copy(folder / "scan.png", folder / "scan_no_suffix")
    (folder / "DICOMDIR.txt").write_text("index\n")
    (folder / "README").write_bytes(b"\x00" * 400)
    files, errors = expand_inputs([folder])
    names = [f.relative_to(folder).as_posix() for f in files]
    assert names == [
        "SERIES1/1.2.840.113619.2.1.7",
        "SERIES1/IM0001",
        "a.dcm",
        "scan.png",
        "scan_no_suffix",
    ]
    assert errors == []


def test_folder_with_nothing_readable_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("nothing to see\n")
    files, errors = expand_inputs([tmp_path])
    assert files == [] and len(errors) == 1
    assert str(tmp_path) in errors[0] and "no .dcm" in errors[0] and "content" in errors[0]


def test_png_without_suffix_is_read_as_png(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "x.png"), ramp())
    (tmp_path / "x.png").rename(tmp_path / "scan")
    np.testing.assert_array_equal(read_film(tmp_path / "scan", 64).pixels, ramp())


@pytest.mark.parametrize(
    "modality, body_part, warned",
    [
        ("CR", "CHEST", None),
        ("DX", "", None),
        ("CT", "CHEST", "Modality CT"),
        ("CR", "HAND", "HAND"),
    ],
)
def test_non_chest_dicom_is_read_and_named(
    tmp_path: Path, modality: str, body_part: str, warned
) -> None:
    path = dicom(tmp_path / "IM0001", modality=modality, body_part=body_part, preamble=False)
    film = read_film(path, 64)
    np.testing.assert_array_equal(film.pixels, ramp())  # read all the same
    if warned is None:
        assert film.problem is None
    else:
        assert film.problem is not None and warned in film.problem


@pytest.mark.slow
def test_cli_scores_a_pacs_folder_and_warns_about_the_ct(small_run, tmp_path, capsys) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    src = sorted((small_run["raw"] / "stage_2_train_images").glob("*.dcm"))[0]
    (folder / "IM0001").write_bytes(src.read_bytes()[132:])  # the phantom, no preamble
    ds = pydicom.dcmread(src)
    ds.Modality = "CT"
    ds.save_as(folder / "IM0002")
    out = tmp_path / "p.csv"
    assert predict_cli(small_run["ckpt"], [str(folder)], out_csv=out, device="cpu") == 0
    df = pd.read_csv(out)
    assert [Path(f).name for f in df["file"]] == ["IM0001", "IM0002"]
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    warnings = [w for w in warnings if "IM000" in w]
    assert len(warnings) == 1 and "IM0002" in warnings[0] and "Modality CT" in warnings[0]
    assert "left empty" in warnings[0]  # a probability, but no decision
    assert df["in_distribution"].tolist() == [True, False]
    assert df["positive"].isna().tolist() == [False, True]


@pytest.mark.slow
def test_a_dicomdir_is_skipped_in_a_folder_and_an_error_alone(small_run, tmp_path, capsys):
    from pydicom.fileset import FileSet

    src = sorted((small_run["raw"] / "stage_2_train_images").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20200101", "120000", "1"  # a study record's
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.save_as(tmp_path / "film.dcm")
    fs = FileSet()
    fs.add(pydicom.dcmread(tmp_path / "film.dcm"))
    fs.write(tmp_path / "export")  # as a PACS or CD export: DICOMDIR at the root
    out = tmp_path / "p.csv"
    assert predict_cli(small_run["ckpt"], [str(tmp_path / "export")], out_csv=out,
                       device="cpu") == 0  # fmt: skip
    scored = pd.read_csv(out)
    assert len(scored) == 1 and "DICOMDIR" not in scored["file"][0]
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if "DICOMDIR" in ln]
    assert len(notes) == 1 and notes[0].startswith("note: ") and notes[0].endswith("; skipped")
    named = tmp_path / "export" / "DICOMDIR"
    assert predict_cli(small_run["ckpt"], [str(named)], out_csv=out, device="cpu") == 1
    err = capsys.readouterr().err
    assert f"error: {named}: DICOMDIR" in err
