"""pneumolib.data.preprocess: the packed cache, its contract, bad files, resuming, and the CLI."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import pneumolib.data.preprocess as pre
from pneumolib.data.cache_stats import CacheStats, write_stats
from pneumolib.data.dicom import REDUCED_DECODE_TOLERANCE, read_dicom
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.labels import load_labels, open_images, read_index, read_stats
from pneumolib.data.preprocess import CacheError, build_cache
from pneumolib.data.synth import make_demo_data

REPO = Path(__file__).resolve().parents[2]
IMAGES, LABELS, CLASSES = pre.IMAGES_DIR, pre.LABELS_CSV, pre.CLASSES_CSV
INDEX_COLUMNS = "patientId,row,target,class,split,sex,age,view,boxes,height,width"


def tree(path: Path) -> dict[str, int]:
    """Relative file name -> mtime, to show a folder was left untouched."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cache32(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted build of the demo folder at 32 px (the reference for resuming)."""
    out = tmp_path_factory.mktemp("cache32") / "cache"
    return build_cache(demo_raw, out, size=32, workers=1, chunk=16, progress=False)


# --- the cache contract -------------------------------------------------------------------


def test_cache_files_follow_the_contract(demo_raw: Path, demo_cache: Path) -> None:
    assert (demo_cache / "index.csv").read_text().splitlines()[0] == INDEX_COLUMNS
    images = np.load(demo_cache / "images.npy", mmap_mode="r")
    assert isinstance(images, np.memmap)
    assert images.dtype == np.uint8 and images.shape == (60, 64, 64)
    idx = read_index(demo_cache)
    assert len(idx) == 60 and idx.patientId.is_unique
    assert sorted(idx.row) == list(range(60))
    assert set(idx.split) == {"train", "val", "test"}
    assert (idx.height == 128).all() and (idx.width == 128).all()  # the demo films' size
    stats = read_stats(demo_cache)
    assert stats.size == 64 and stats.n == 60
    assert 0 < stats.mean < 1 and 0 < stats.std < 0.5
    assert stats.split_rule == "stratified"
    assert Path(stats.source) == demo_raw.resolve()
    errors = pd.read_csv(demo_cache / "errors.csv")
    assert list(errors.columns) == ["patientId", "path", "error"] and errors.empty
    assert not demo_cache.with_name(demo_cache.name + ".partial").exists()


def test_cached_pixels_and_header_fields(demo_raw: Path, demo_cache: Path) -> None:
    idx, images = read_index(demo_cache), open_images(demo_cache)
    for r in idx.sample(8, random_state=0).itertuples():
        d = read_dicom(demo_raw / IMAGES / f"{r.patientId}.dcm", size=64)
        np.testing.assert_array_equal(images[r.row], d.pixels)
        assert (r.sex, r.age, r.view) == (d.sex, d.age, d.view)
    assert images[idx.row].std(axis=(1, 2)).min() > 10  # every row holds an image


def test_cache_stats_round_trip_byte_for_byte(demo_cache: Path, tmp_path: Path) -> None:
    """stats.json -> CacheStats -> the same dict and the same bytes; a stats.json from before
    the newer keys loads (they are None) and writes back as it was."""
    text = (demo_cache / "stats.json").read_text()
    d = json.loads(text)
    stats = CacheStats.from_dict(d)
    assert stats.to_dict() == d and list(stats.to_dict()) == list(d)
    write_stats(stats, tmp_path / "stats.json")
    assert (tmp_path / "stats.json").read_text() == text
    old = {k: d[k] for k in ("mean", "std", "size", "n", "source", "created")} | {"x": 1}
    legacy = CacheStats.from_dict(old)
    assert legacy.synthetic is None and legacy.inputs is None and legacy.extra == {"x": 1}
    assert legacy.to_dict() == old
    assert legacy.for_checkpoint() == {
        "mean": d["mean"],
        "std": d["std"],
        "size": d["size"],
        "synthetic": None,
    }
    with pytest.raises(ValueError, match="without size"):
        CacheStats.from_dict({"mean": 0.5, "std": 0.2})


def test_stats_are_train_only(demo_cache: Path) -> None:
    idx, images, stats = read_index(demo_cache), open_images(demo_cache), read_stats(demo_cache)
    train = np.asarray(images[np.sort(idx.row[idx.split == "train"])], np.float64) / 255
    assert stats.mean == pytest.approx(train.mean(), rel=1e-9)
    assert stats.std == pytest.approx(train.std(), rel=1e-6)
    assert stats.n_train == (idx.split == "train").sum()
    everything = np.asarray(images, np.float64) / 255
    assert abs(everything.mean() - stats.mean) > 1e-5
    assert abs(everything.std() - stats.std) > 1e-6


def test_boxes_are_in_cache_pixels(demo_raw: Path, demo_cache: Path) -> None:
    labels = load_labels(demo_raw / LABELS).set_index("patientId")
    idx = read_index(demo_cache)
    positives = idx[idx.target == 1]
    assert len(positives) >= 5
    k = 64 / 128  # demo images are square: scale only, no letterbox offset
    for r in positives.itertuples():
        expected = [[v * k for v in box] for box in labels.loc[r.patientId, "boxes"]]
        assert len(r.boxes) == len(expected) > 0
        for got, want in zip(r.boxes, expected, strict=True):
            assert got == pytest.approx(want, abs=0.01)
    assert all(b == [] for b in idx.boxes[idx.target == 0])


def test_splits_keep_patients_apart(demo_cache: Path) -> None:
    idx = read_index(demo_cache)
    by_split = [set(idx.patientId[idx.split == s]) for s in ("train", "val", "test")]
    assert sum(map(len, by_split)) == len(set().union(*by_split)) == len(idx)
    assert (idx.split == "train").mean() == pytest.approx(0.7, abs=0.05)


# --- bad files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_raw(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo folder with a corrupt and a truncated file, a lost image and an unlabelled one."""
    raw = tmp_path_factory.mktemp("broken") / "raw"
    shutil.copytree(demo_raw, raw)
    ids = load_labels(raw / LABELS).patientId.tolist()
    corrupt, truncated, lost = ids[3], ids[10], ids[20]
    ds = pydicom.dcmread(raw / IMAGES / f"{corrupt}.dcm")  # the JPEG frame replaced by noise
    ds.PixelData = pydicom.encaps.encapsulate([np.random.default_rng(0).bytes(3000)])
    ds.save_as(raw / IMAGES / f"{corrupt}.dcm")
    data = (raw / IMAGES / f"{truncated}.dcm").read_bytes()
    (raw / IMAGES / f"{truncated}.dcm").write_bytes(data[: len(data) // 2])
    (raw / IMAGES / f"{lost}.dcm").unlink()
    orphan = "00000000-orphan"
    write_dicom(raw / IMAGES / f"{orphan}.dcm", np.zeros((128, 128), np.uint8), patient_id=orphan)
    return {
        "raw": raw,
        "ids": ids,
        "corrupt": corrupt,
        "truncated": truncated,
        "lost": lost,
        "orphan": orphan,
    }


def test_bad_files_land_in_errors_csv(
    broken_raw: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = build_cache(
        broken_raw["raw"], tmp_path / "cache", size=32, workers=2, chunk=16, progress=False
    )
    summary = capsys.readouterr().out
    assert "2 unreadable" in summary and "2 label/image mismatches" in summary
    assert str(out / "errors.csv") in summary
    errors = pd.read_csv(out / "errors.csv").set_index("patientId")
    assert len(errors) == 4
    assert "jpeg" in errors.loc[broken_raw["corrupt"], "error"].lower()
    assert "truncated" in errors.loc[broken_raw["truncated"], "error"]
    assert "no image file" in errors.loc[broken_raw["lost"], "error"]
    assert "no label rows" in errors.loc[broken_raw["orphan"], "error"]
    for key in ("corrupt", "truncated", "orphan"):
        assert errors.loc[broken_raw[key], "path"].endswith(f"{broken_raw[key]}.dcm")
    # the rest is cached, and nothing else
    idx, images = read_index(out), open_images(out)
    bad = {broken_raw[k] for k in ("corrupt", "truncated", "lost", "orphan")}
    assert set(idx.patientId) == set(broken_raw["ids"]) - bad and len(idx) == 57
    assert images.shape == (59, 32, 32)  # a row per labelled image on disk; the 2 bad stay 0
    for r in idx.iloc[::10].itertuples():
        d = read_dicom(broken_raw["raw"] / IMAGES / f"{r.patientId}.dcm", size=32)
        np.testing.assert_array_equal(images[r.row], d.pixels)
    assert read_stats(out).n == 57


def test_missing_label_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raw" / IMAGES).mkdir(parents=True)
    with pytest.raises(CacheError, match=LABELS):
        build_cache(tmp_path / "raw", tmp_path / "cache", size=32, progress=False)
    assert not (tmp_path / "cache").exists()


def test_unsplittable_labels_are_refused_before_any_work(tmp_path: Path) -> None:
    raw = make_demo_data(tmp_path / "raw", n=10, size=64)  # 1 positive: val/test cannot have one
    with pytest.raises(CacheError, match="positives") as err:
        build_cache(raw, tmp_path / "cache", size=32, workers=1, progress=False)
    assert str(err.value).startswith(f"{raw}: ") and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no cache, no .partial


# --- reuse, refusal, resume -------------------------------------------------------------------


def test_same_params_is_a_no_op(
    demo_raw: Path, cache32: Path, capsys: pytest.CaptureFixture
) -> None:
    before = tree(cache32)
    assert build_cache(demo_raw, cache32, size=32, workers=1, progress=False) == cache32
    assert "nothing to do" in capsys.readouterr().out
    assert tree(cache32) == before


def test_other_params_refused_unless_rebuild(demo_raw: Path, cache32: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(cache32, out)
    before = tree(out)
    with pytest.raises(CacheError, match="size") as err:
        build_cache(demo_raw, out, size=48, workers=1, progress=False)
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    with pytest.raises(CacheError, match="seed"):
        build_cache(demo_raw, out, size=32, seed=1, workers=1, progress=False)
    assert tree(out) == before
    build_cache(demo_raw, out, size=48, workers=1, progress=False, rebuild=True)
    assert open_images(out).shape == (60, 48, 48) and read_stats(out).size == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no .old / .partial left


@pytest.mark.parametrize("crash", ["error", "disk-full"])
def test_interrupted_build_resumes_to_the_identical_cache(
    demo_raw: Path,
    cache32: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    crash: str,
) -> None:
    real = pre._process_chunk
    calls: list[int] = []

    def crashing(job: tuple) -> list[dict]:
        calls.append(len(job[1]))
        if len(calls) > 3:  # the 4th chunk is written to the memory map, never logged
            real(job)
            if crash == "disk-full":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("simulated crash")
        return real(job)

    out, part = tmp_path / "cache", tmp_path / "cache.partial"
    monkeypatch.setattr(pre, "_process_chunk", crashing)
    expected = CacheError if crash == "disk-full" else RuntimeError
    with pytest.raises(expected, match="disk full" if crash == "disk-full" else "simulated"):
        build_cache(demo_raw, out, size=32, workers=1, chunk=8, progress=False)
    assert part.is_dir() and not out.exists()
    assert len((part / "progress.jsonl").read_text().splitlines()) == 3
    # an unfinished build with other parameters is not silently mixed in
    with pytest.raises(CacheError, match="unfinished"):
        build_cache(demo_raw, out, size=48, workers=1, chunk=8, progress=False)
    assert part.is_dir()

    calls.clear()
    monkeypatch.setattr(pre, "_process_chunk", lambda job: calls.append(len(job[1])) or real(job))
    capsys.readouterr()
    build_cache(demo_raw, out, size=32, workers=1, chunk=8, progress=False)
    assert "24 of 60 images already done" in capsys.readouterr().out
    assert sum(calls) == 60 - 24  # only what was not logged is read again
    assert out.is_dir() and not part.exists()
    assert (out / "images.npy").read_bytes() == (cache32 / "images.npy").read_bytes()
    assert (out / "index.csv").read_bytes() == (cache32 / "index.csv").read_bytes()
    a, b = read_stats(out), read_stats(cache32)
    assert (a.mean, a.std, a.n) == (b.mean, b.std, b.n)


# --- decoders -----------------------------------------------------------------------------------


def test_torchvision_decoder_matches_opencv(
    demo_raw: Path, demo_cache: Path, tmp_path: Path
) -> None:
    tv = build_cache(demo_raw, tmp_path / "tv", size=64, workers=1, decoder="cpu", progress=False)
    a = open_images(demo_cache).astype(np.float64)
    b = open_images(tv).astype(np.float64)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.mean() <= REDUCED_DECODE_TOLERANCE["mean_abs"]
    assert np.percentile(diff, 99) <= REDUCED_DECODE_TOLERANCE["p99_abs"]
    pd.testing.assert_frame_equal(read_index(tv), read_index(demo_cache))


def test_torchvision_decoder_refuses_a_flat_image(demo_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    pid = load_labels(raw / LABELS).patientId[7]
    write_dicom(raw / IMAGES / f"{pid}.dcm", np.full((128, 128), 90, np.uint8), patient_id=pid)
    out = build_cache(raw, tmp_path / "tv", size=32, workers=1, decoder="cpu", progress=False)
    errors = pd.read_csv(out / "errors.csv").set_index("patientId")
    assert list(errors.index) == [pid]
    assert "single grey level" in errors.loc[pid, "error"] and pid in errors.loc[pid, "error"]
    assert pid not in set(read_index(out).patientId)


# --- the command line -------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PNEUMOLIB_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "pneumolib", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_make_demo_data_then_preprocess(tmp_path: Path) -> None:
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    # 30 patients: the fewest whose val and test splits (15% each) hold both classes
    r = cli("make-demo-data", str(raw), "--n", "30", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert len(list((raw / IMAGES).glob("*.dcm"))) == 30
    r = cli("preprocess", "--raw", str(raw), "--out", str(cache), "--size", "32")
    assert r.returncode == 0, r.stderr
    assert str(cache) in r.stdout
    assert np.load(cache / "images.npy", mmap_mode="r").shape == (30, 32, 32)
    assert json.loads((cache / "stats.json").read_text())["size"] == 32


def test_cli_wrong_csv_exits_2_with_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / IMAGES).mkdir(parents=True)
    (raw / LABELS).write_text("patientId,x,y,width,height\nabc,1,2,3,4\n")  # no Target
    r = cli("preprocess", "--raw", str(raw), "--out", str(tmp_path / "cache"), "--size", "32")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(raw / LABELS) in lines[0] and "Target" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "cache").exists()
