"""pneumolib.predict's outputs: overlay names unique across a call and readable, the CSV's
`overlay` column, and a destination that cannot be written (the scores still reach stdout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumolib.predict import overlay_names, predict_files

ROOT = Path(__file__).resolve().parents[1]


def test_overlay_names_unique_and_readable() -> None:
    files = [Path("a/x.dcm"), Path("b/x.dcm"), Path("c/x_2.dcm")]  # one batch today: two x_2
    assert overlay_names(files) == ["x", "x_2", "x_2_2"]
    unicode = [Path("röntgen 1.dcm"), Path("胸部 X線.dcm"), Path("tab\there.png")]
    assert overlay_names(unicode) == ["röntgen 1", "胸部 X線", "tab_here"]
    assert overlay_names([Path("d/Scan.png"), Path("e/scan.png")]) == ["Scan", "scan_2"]
    assert overlay_names([Path("..png"), Path("...png")]) == ["image", "image_2"]


@pytest.mark.slow
def test_same_stem_in_two_batches_gets_two_overlays(small_run, tmp_path) -> None:
    src = sorted((small_run["raw"] / "stage_2_train_images").glob("*.dcm"))[:2]
    for sub, f in zip(("a", "b"), src, strict=True):  # same name, different films
        (tmp_path / sub).mkdir()
        shutil.copy(f, tmp_path / sub / "f00.dcm")
    cams = tmp_path / "cams"
    inputs = [tmp_path / "a", tmp_path / "b"]
    df, errors = predict_files(small_run["ckpt"], inputs, device="cpu", cam_dir=cams,
                               batch_size=1)  # fmt: skip
    assert errors == []
    assert [Path(p).name for p in df["overlay"]] == ["f00.png", "f00_2.png"]
    first, second = (cv2.imread(p) for p in df["overlay"])
    assert first is not None and second is not None and not np.array_equal(first, second)


def _read_only_works(folder: Path) -> str | None:
    """None when a read-only bind mount of `folder` can be made here (a mount namespace; it
    stops root too, as `chmod` does not), else why not."""
    if shutil.which("unshare") is None:
        return "unshare not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", _ro_script(folder, "touch probe")],
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0 or "Read-only" not in probe.stderr:
        return f"no read-only bind mount here: {probe.stderr.strip()[:200]}"
    return None


def _ro_script(folder: Path, command: str) -> str:
    d = f"'{folder}'"
    return f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && cd {d} && {command}"


@pytest.mark.slow
def test_read_only_destination_names_it_and_prints_the_scores(small_run, tmp_path) -> None:
    dest = tmp_path / "ro"
    dest.mkdir()
    why = _read_only_works(dest)
    if why:
        pytest.skip(why)
    film = sorted((small_run["raw"] / "stage_2_train_images").glob("*.dcm"))[0]
    command = (
        f"exec {sys.executable} -m pneumolib predict --checkpoint '{small_run['ckpt']}' "
        f"'{film}' --device cpu --cam '{dest / 'cams'}' --out '{dest / 'p.csv'}'"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c", _ro_script(dest, command)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2, res.stderr
    assert errors[0].startswith(f"error: {dest / 'cams'}: overlays cannot be written")
    assert errors[1].startswith(f"error: {dest / 'p.csv'}: cannot write the CSV")
    assert ".tmp" not in res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("file,probability,") and len(lines) == 2  # the scored film
    assert lines[1].startswith(str(film))
    assert list(dest.iterdir()) == []


@pytest.mark.slow
def test_unwritable_overlays_keep_the_scores(small_run, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a folder cannot be made under a file, even by root
    film = sorted((small_run["raw"] / "stage_2_train_images").glob("*.dcm"))[0]
    df, errors = predict_files(small_run["ckpt"], [film], device="cpu",
                               cam_dir=blocker / "cams")  # fmt: skip
    assert len(df) == 1 and pd.notna(df.loc[0, "probability"]) and df.loc[0, "overlay"] == ""
    assert len(errors) == 1 and errors[0].startswith(f"{blocker / 'cams'}: overlays cannot")
