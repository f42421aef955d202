"""pneumolib.data.synth: RSNA-shaped demo folders of phantom radiographs, deterministic for a
seed."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from pneumolib.data.dicom import read_dicom
from pneumolib.data.labels import load_labels
from pneumolib.data.provenance import read_truth
from pneumolib.data.synth import (
    REALISM,
    as_realism,
    make_demo_data,
    marker_box,
    phantom,
)

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
        neg, _ = phantom(np.random.default_rng(seed), 128, view="AP", positive=False)
        pos, boxes = phantom(np.random.default_rng(seed), 128, view="AP", positive=True)
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
    img, boxes = phantom(np.random.default_rng(11), size, view="PA", positive=True)
    ref, ref_boxes = phantom(np.random.default_rng(11), 256, view="PA", positive=True)
    assert img.shape == (size, size) and img.dtype == np.uint8
    assert len(boxes) == len(ref_boxes) > 0
    k = size / 256
    for b, r in zip(boxes, ref_boxes, strict=True):
        assert b == pytest.approx([v * k for v in r], abs=0.1)


# --- realism: as hard as RSNA, for the reasons RSNA is hard -------------------------------


@pytest.fixture(scope="module")
def truth(demo400: Path) -> pd.DataFrame:
    return read_truth(demo400)


def test_default_realism_is_rsna_with_label_noise_on_hard_cases(truth: pd.DataFrame) -> None:
    assert (truth.label != truth.opacity).sum() == (truth.label_noise != "").sum() > 0
    drawn = truth[truth.opacity == 1]
    missed = (drawn.label_noise == "missed").mean()
    assert 0.03 <= missed <= 0.25  # REALISM["rsna"].missed = 0.12
    over = truth[truth.label_noise == "overcalled"]
    assert len(over) > 0 and (over.mimic != "").mean() > (truth.mimic != "").mean()  # on mimics
    assert truth.faint.sum() > 0 and truth.small.sum() > 0
    assert (truth.mimic[truth.opacity == 0] != "").mean() > 0.15
    assert not truth.marker.any()  # the shortcut is off by default


def test_no_reader_matches_every_label(truth: pd.DataFrame) -> None:
    """A reader who sees every drawn opacity still disagrees with some labels: AUC < 0.95."""
    from sklearn.metrics import roc_auc_score

    ceiling = roc_auc_score(truth.label, truth.opacity)
    assert 0.8 < ceiling < 0.95


def test_truth_matches_the_label_csv(demo400: Path, table: pd.DataFrame, truth) -> None:
    merged = table.merge(truth, on="patientId")
    assert len(merged) == len(table) == len(truth)
    assert (merged.target == merged.label).all()
    assert (merged.view_x == merged.view_y).all()
    # a missed opacity is labelled "not normal", not "normal"
    missed = merged[merged.label_noise == "missed"]
    assert (missed["class"] == "No Lung Opacity / Not Normal").all()


def test_easy_preset_has_no_ambiguity(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    t = read_truth(make_demo_data(tmp_path / "easy", n=120, size=SIZE, realism="easy"))
    assert (t.label == t.opacity).all() and (t.label_noise == "").all()
    assert not t.faint.any() and not t.small.any() and (t.mimic == "").all()
    assert roc_auc_score(t.label, t.opacity) == 1.0


def test_easy_phantom_is_the_default_phantom() -> None:
    a, boxes_a = phantom(np.random.default_rng(4), 96, view="AP", positive=True, not_normal=True)
    b, boxes_b = phantom(
        np.random.default_rng(4),
        96,
        view="AP",
        positive=True,
        not_normal=True,
        realism=REALISM["easy"],
    )
    np.testing.assert_array_equal(a, b)
    assert boxes_a == boxes_b


def _film(view: str, seed: int, **kw) -> np.ndarray:
    img, _ = phantom(
        np.random.default_rng(seed), 256, view=view, positive=False, realism=REALISM["rsna"], **kw
    )
    return img.astype(np.float32)


def test_portable_ap_films_are_flatter_and_noisier() -> None:
    """Same anatomy and exposure draws; only the view differs (the heart size draw aside)."""
    flat, noisy = [], []
    for seed in range(6):
        ap, pa = _film("AP", seed), _film("PA", seed)
        flat.append(ap.std() / pa.std())
        hf = [np.std(x - cv2.GaussianBlur(x, (0, 0), 3)) for x in (ap, pa)]
        noisy.append(hf[0] / hf[1])
    assert np.mean(flat) < 0.9 and np.mean(noisy) > 1.2


def test_mimic_draws_an_opacity_like_finding_with_a_box() -> None:
    for kind in ("band", "overlap"):
        base, no_box = phantom(
            np.random.default_rng(2), 128, view="PA", positive=False, not_normal=True
        )
        img, boxes = phantom(
            np.random.default_rng(2), 128, view="PA", positive=False, not_normal=True, mimic=kind
        )
        assert no_box == [] and len(boxes) == 1
        x, y, w, h = boxes[0]
        sl = np.s_[int(y) : int(y + h), int(x) : int(x + w)]
        assert img[sl].astype(float).mean() > base[sl].astype(float).mean() + 5


def test_shortcut_marks_positive_and_some_negative_ap_films(tmp_path: Path) -> None:
    raw = make_demo_data(tmp_path / "sc", n=60, size=SIZE, seed=2, shortcut=True)
    t = read_truth(raw)
    ap = t[t.view == "AP"]
    assert not t.marker[t.view == "PA"].any()
    assert ap.marker[ap.label == 1].all() and ap.label.sum() > 0  # reading it pays...
    assert 0 < ap.marker[ap.label == 0].sum() < (ap.label == 0).sum()  # ...but not always
    corner = {
        pid: read_dicom(raw / IMAGES / f"{pid}.dcm").pixels[: SIZE // 8, : SIZE // 3].max()
        for pid in t.patientId
    }
    marked = [corner[p] for p in t.patientId[t.marker]]
    plain = [corner[p] for p in t.patientId[~t.marker]]
    assert min(marked) > max(plain)  # the burned-in text is the brightest thing in that corner
    with pytest.raises(FileExistsError, match="demo"):  # another realism: refused
        make_demo_data(raw, n=60, size=SIZE, seed=2)


def test_realism_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown realism 'hard'"):
        make_demo_data(tmp_path / "x", n=2, size=32, realism="hard")
    assert as_realism("easy", shortcut=True).shortcut
    with pytest.raises(FileNotFoundError, match="demo folders"):
        read_truth(tmp_path)


def test_marker_box_holds_the_burned_in_text() -> None:
    r = REALISM["rsna"]
    for size in (128, 256):
        with_text, _ = phantom(
            np.random.default_rng(1), size, view="AP", positive=False, realism=r, marker=True
        )
        plain, _ = phantom(np.random.default_rng(1), size, view="AP", positive=False, realism=r)
        changed = np.abs(with_text.astype(int) - plain.astype(int)) > 60
        x, y, w, h = marker_box(size)
        inside = changed[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))].sum()
        assert changed.sum() > 20 and inside / changed.sum() > 0.95


def test_the_format_keeps_its_name_so_existing_demo_folders_stay_valid():
    """A demo folder made before the module moved (generator "pneumolib.synth v3") is reused,
    not refused: the marker names the format, not the module path."""
    from pneumolib.data import synth

    assert synth.GENERATOR == "pneumolib.synth v3"


def test_unlabelled_test_folder_beside_unchanged_training_films(tmp_path: Path) -> None:
    """Kaggle's stage_2_test_images/: N_TEST films, patientId = file stem, no label rows; the
    labelled films are those the seed gave before the folder existed (digest of labels and
    pixels), and a demo folder without it gets it on the next call, the same films."""
    import hashlib
    import shutil

    from pneumolib.data.kaggle import TEST_DIR
    from pneumolib.data.synth import N_TEST

    out = make_demo_data(tmp_path / "demo", n=8, size=SIZE, seed=5)
    h = hashlib.sha256((out / LABELS).read_bytes())
    for p in sorted((out / IMAGES).glob("*.dcm")):
        h.update(read_dicom(p).pixels.tobytes())
    assert h.hexdigest()[:16] == "519fa1a9743eb0ed"
    tests = sorted((out / TEST_DIR).glob("*.dcm"))
    assert len(tests) == N_TEST == len(list((out / TEST_DIR).iterdir()))
    assert all(pydicom.dcmread(p).PatientID == p.stem for p in tests)
    assert not {p.stem for p in tests} & set(pd.read_csv(out / LABELS).patientId)
    pixels = {p.name: read_dicom(p).pixels for p in tests}
    shutil.rmtree(out / TEST_DIR)
    make_demo_data(out, n=8, size=SIZE, seed=5)
    assert sorted(p.name for p in (out / TEST_DIR).iterdir()) == sorted(pixels)
    for name, px in pixels.items():
        np.testing.assert_array_equal(read_dicom(out / TEST_DIR / name).pixels, px)
