"""pneumolib.synth: RSNA-shaped demo folders of phantom radiographs, deterministic for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from pneumolib.data import load_labels
from pneumolib.dicom import read_dicom
from pneumolib.synth import make_demo_data, phantom

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMAGES, LABELS, CLASSES = (
    "stage_2_train_images",
    "stage_2_train_labels.csv",
    "stage_2_detailed_class_info.csv",
)
SIZE = 64


@pytest.fixture(scope="module")
def demo400(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("synth") / "d400", n=400, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def table(demo400: Path) -> pd.DataFrame:
    """One row per patient: labels joined with the pixels and header of its DICOM."""
    df = load_labels(demo400 / LABELS, demo400 / CLASSES)
    reads = [read_dicom(demo400 / IMAGES / f"{p}.dcm") for p in df.patientId]
    df["view"] = [d.view for d in reads]
    df["pixels"] = [d.pixels for d in reads]
    return df


def test_folder_is_rsna_shaped(demo400: Path) -> None:
    files = sorted((demo400 / IMAGES).glob("*.dcm"))
    assert len(files) == 400
    labels = pd.read_csv(demo400 / LABELS)
    assert list(labels.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    assert list(pd.read_csv(demo400 / CLASSES).columns) == ["patientId", "class"]
    assert set(labels.patientId) == {f.stem for f in files}
    assert json.loads((demo400 / "demo_params.json").read_text())["n"] == 400
    assert not list(demo400.parent.glob("d400.tmp-*"))  # no half-built sibling left


def test_positive_rate_and_views(table: pd.DataFrame) -> None:
    assert 0.15 <= table.target.mean() <= 0.30
    assert set(table.view) == {"AP", "PA"}
    rate = table.groupby("view").target.mean()
    assert rate["AP"] > rate["PA"] + 0.1  # RSNA: ~38% against ~9%
    assert 0.3 <= (table.view == "AP").mean() <= 0.6


def test_classes_agree_with_targets(table: pd.DataFrame) -> None:
    assert ((table["class"] == "Lung Opacity") == (table.target == 1)).all()
    negatives = set(table["class"][table.target == 0])
    assert negatives == {"Normal", "No Lung Opacity / Not Normal"}


def test_boxes_inside_image_only_on_positives(table: pd.DataFrame) -> None:
    for target, boxes in zip(table.target, table.boxes, strict=True):
        assert (len(boxes) > 0) == bool(target)
        assert len(boxes) <= 2
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= SIZE and y + h <= SIZE


def test_opacity_is_not_the_brightest_structure(table: pd.DataFrame) -> None:
    positives = table[table.target == 1]
    assert len(positives) > 30
    for pixels, boxes in zip(positives.pixels, positives.boxes, strict=True):
        inside = max(
            pixels[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))].max()
            for x, y, w, h in boxes
        )
        assert inside < pixels.max()


def test_opacity_brightens_the_box() -> None:
    """Same anatomy drawn with and without the opacity: the box region gets brighter."""
    gains = []
    for seed in range(6):
        neg, _ = phantom(np.random.default_rng(seed), 128, "AP", positive=False)
        pos, boxes = phantom(np.random.default_rng(seed), 128, "AP", positive=True)
        assert pos.shape == neg.shape == (128, 128) and pos.dtype == np.uint8
        for x, y, w, h in boxes:
            sl = np.s_[int(y) : int(y + h), int(x) : int(x + w)]
            gains.append(pos[sl].mean() - neg[sl].mean())
    assert np.mean(gains) > 5


def test_files_are_jpeg_baseline_with_rsna_tags(demo400: Path, table: pd.DataFrame) -> None:
    for pid in table.patientId[:20]:
        ds = pydicom.dcmread(demo400 / IMAGES / f"{pid}.dcm")
        assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
        assert ds.PatientID == pid
        assert ds.PatientSex in ("M", "F")
        assert str(ds.PatientAge).isdigit() and 1 <= int(ds.PatientAge) <= 92
        assert ds.ViewPosition in ("AP", "PA")
        assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_demo_data(tmp_path / "a", n=8, size=SIZE, seed=5)
    b = make_demo_data(tmp_path / "b", n=8, size=SIZE, seed=5)
    c = make_demo_data(tmp_path / "c", n=8, size=SIZE, seed=6)
    assert (a / LABELS).read_bytes() == (b / LABELS).read_bytes()
    assert (a / CLASSES).read_bytes() == (b / CLASSES).read_bytes()
    assert (a / LABELS).read_bytes() != (c / LABELS).read_bytes()
    names = sorted(p.name for p in (a / IMAGES).iterdir())
    assert names == sorted(p.name for p in (b / IMAGES).iterdir())
    for name in names:
        da, db = read_dicom(a / IMAGES / name), read_dicom(b / IMAGES / name)
        np.testing.assert_array_equal(da.pixels, db.pixels)
        assert da.meta() == db.meta()


def test_idempotent_and_refuses_other_params(tmp_path: Path) -> None:
    out = make_demo_data(tmp_path / "demo", n=6, size=SIZE, seed=1)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert make_demo_data(out, n=6, size=SIZE, seed=1) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp
    for other in (
        {"n": 7, "size": SIZE, "seed": 1},
        {"n": 6, "size": 32, "seed": 1},
        {"n": 6, "size": SIZE, "seed": 2},
    ):
        with pytest.raises(FileExistsError, match="demo"):
            make_demo_data(out, **other)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp


def test_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not pneumolib demo data"):
        make_demo_data(tmp_path / "mine", n=2, size=32)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert len(list((make_demo_data(tmp_path / "empty", n=2, size=32) / IMAGES).iterdir())) == 2


@pytest.mark.parametrize("size", [64, 200])
def test_phantom_boxes_scale_with_size(size: int) -> None:
    img, boxes = phantom(np.random.default_rng(11), size, "PA", positive=True)
    ref, ref_boxes = phantom(np.random.default_rng(11), 256, "PA", positive=True)
    assert img.shape == (size, size) and img.dtype == np.uint8
    assert len(boxes) == len(ref_boxes) > 0
    k = size / 256
    for b, r in zip(boxes, ref_boxes, strict=True):
        assert b == pytest.approx([v * k for v in r], abs=0.1)
