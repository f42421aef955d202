"""pneumolib.data.preprocess when things go wrong: a full disk, a worker that dies, inputs that
change under a cache, a file fixed after it failed. Each ends in one line or resumes to the
identical cache."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pneumolib.data.cache_partial as cp
import pneumolib.data.preprocess as pre
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.labels import load_labels, read_index
from pneumolib.data.preprocess import CacheError, build_cache

REPO = Path(__file__).resolve().parents[2]
IMAGES, LABELS = pre.IMAGES_DIR, pre.LABELS_CSV
BUILD = {"size": 32, "chunk": 8, "progress": False}  # as the reference cache32, chunks aside


@pytest.fixture(scope="module")
def cache32(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted one-process build of the demo folder at 32 px: the reference."""
    out = tmp_path_factory.mktemp("cache32") / "cache"
    return build_cache(demo_raw, out, size=32, workers=1, chunk=16, progress=False)


def assert_same_cache(a: Path, b: Path) -> None:
    """Same pixels, index and errors byte for byte; same stats but the creation time."""
    for name in ("images.npy", "index.csv", "errors.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = (json.loads((c / "stats.json").read_text()) for c in (a, b))
    assert {**sa, "created": None} == {**sb, "created": None}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """resize("128k") -> a tmpfs of that size at tmp_path/disk (mounted, then remounted);
    skips the test where mounting is not allowed; unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = False

    def resize(size: str) -> Path:
        nonlocal mounted
        opts = ["-o", f"remount,size={size}"] if mounted else ["-t", "tmpfs", "-o", f"size={size}"]
        r = subprocess.run(["mount", *opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0 and not mounted:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        mounted = True
        return mnt

    yield resize
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- a full disk ------------------------------------------------------------------------------


def test_full_disk_is_refused_up_front_then_builds_once_freed(
    demo_raw: Path, cache32: Path, small_disk: Callable[[str], Path]
) -> None:
    disk = small_disk("128k")  # 60 x 32 x 32 = 61 kB of pixels + room for the text files
    t0 = time.perf_counter()
    with pytest.raises(CacheError) as err:
        build_cache(demo_raw, disk / "cache", workers=2, **BUILD)
    msg = str(err.value)
    assert time.perf_counter() - t0 < 5
    assert msg.startswith(f"{disk / 'cache.partial'}: not enough disk space") and "\n" not in msg
    needed = 60 * 32 * 32 + 128 + cp.SPACE_MARGIN + 60 * cp.SPACE_PER_ROW
    assert f"needs {cp.human_bytes(needed)}, 131.1 kB free" in msg
    assert list(disk.iterdir()) == []  # refused before anything was written

    small_disk("1m")  # space freed: the same command now builds, in two worker processes
    out = build_cache(demo_raw, disk / "cache", workers=2, **BUILD)
    assert_same_cache(out, cache32)


@pytest.mark.parametrize("allocation", ["posix_fallocate", "writing zeros"])
def test_disk_filling_after_the_check_fails_at_allocation(
    demo_raw: Path,
    small_disk: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    allocation: str,
) -> None:
    disk = small_disk("128k")
    # the check saw room, then something else took it: allocation must fail, not a worker
    monkeypatch.setattr(cp.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1e12, 0, 1e12))
    if allocation == "writing zeros":

        def unsupported(*_: object) -> None:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    with pytest.raises(CacheError) as err:  # 60 x 64 x 64 = 246 kB cannot fit in 128 kB
        build_cache(demo_raw, disk / "cache", workers=1, size=64, progress=False)
    assert str(err.value) == (
        f"{disk / 'cache.partial'}: disk full while allocating the cache (245.9 kB); "
        "free space and re-run the same command"
    )
    assert list(disk.iterdir()) == []  # the sparse start is removed, its space given back


def test_fallback_allocation_keeps_what_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "posix_fallocate")  # as on macOS
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(3 * 2**20)
        f.seek(2**20 + 5)
        f.write(b"rows already done")
    before = path.read_bytes()
    cp.allocate(path, part=tmp_path)
    assert path.read_bytes() == before
    assert cp.unallocated_bytes(path) == 0


# --- a worker that dies -------------------------------------------------------------------------

KILL_A_WORKER = """
import os, resource, signal, sys
import pneumolib.data.preprocess as pre
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGBUS would dump core
real, sig = pre._process_chunk, getattr(signal, sys.argv[3])

def dying(job):
    metas = real(job)  # rows written into the memory map, never reported
    if 40 in job[1]:
        os.kill(os.getpid(), sig)
    return metas

pre._process_chunk = dying
try:
    pre.build_cache(sys.argv[1], sys.argv[2], size=32, workers=2, chunk=8, progress=False)
except pre.CacheError as e:
    print(f"CacheError: {e}")
"""


def run_bounded(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command in its own process group; a hang fails the test and kills the group."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"no answer within {timeout} s: the build hangs")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGBUS"])  # the OOM killer; a full sparse map
def test_a_dead_worker_ends_the_build_then_it_resumes(
    demo_raw: Path, cache32: Path, tmp_path: Path, capsys: pytest.CaptureFixture, sig: str
) -> None:
    out, part = tmp_path / "cache", tmp_path / "cache.partial"
    r = run_bounded([sys.executable, "-c", KILL_A_WORKER, str(demo_raw), str(out), sig], 90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == (
        f"CacheError: {part}: a worker process died (killed by the system, e.g. out of memory, "
        "or by a signal); finished chunks are saved: re-run the same command to resume"
    )
    assert part.is_dir() and not out.exists()

    capsys.readouterr()
    build_cache(demo_raw, out, workers=2, **BUILD)
    resumed = capsys.readouterr().out
    assert "images already done" in resumed  # the chunks before the death are not redone
    assert_same_cache(out, cache32)


# --- what the cache remembers ------------------------------------------------------------------


def crash_after(chunks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the one-process build stop with a RuntimeError after `chunks` logged chunks."""
    real, calls = pre._process_chunk, []

    def crashing(job: tuple) -> list[dict]:
        calls.append(job)
        if len(calls) > chunks:
            raise RuntimeError("simulated crash")
        return real(job)

    monkeypatch.setattr(pre, "_process_chunk", crashing)


def test_a_file_fixed_after_it_failed_is_retried_on_resume(
    demo_raw: Path, cache32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    pid = load_labels(raw / LABELS).patientId[5]  # row 5: in the first chunk
    victim = raw / IMAGES / f"{pid}.dcm"
    good = victim.read_bytes()
    victim.write_bytes(bytes(len(good)))  # still being copied: the right size, all zeros
    crash_after(2, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        build_cache(raw, tmp_path / "cache", workers=1, **BUILD)
    log = (tmp_path / "cache.partial" / "progress.jsonl").read_text().splitlines()
    logged = {m["row"]: m for line in log for m in json.loads(line)}
    assert pid in logged[5]["error"]  # logged as done, but unreadable

    victim.write_bytes(good)  # the copy finished
    monkeypatch.undo()
    out = build_cache(raw, tmp_path / "cache", workers=1, **BUILD)
    assert pid in set(read_index(out).patientId)
    assert pd.read_csv(out / "errors.csv").empty
    assert (out / "images.npy").read_bytes() == (cache32 / "images.npy").read_bytes()


def test_changed_inputs_are_refused_until_rebuild(
    demo_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "cache"
    shutil.copytree(demo_raw, raw)
    build_cache(raw, out, workers=1, **BUILD)
    stats = (out / "stats.json").read_text()

    extra = raw / IMAGES / "00000000-new.dcm"  # an image added
    write_dicom(extra, np.zeros((128, 128), np.uint8), patient_id="00000000-new")
    with pytest.raises(CacheError) as err:
        build_cache(raw, out, workers=1, **BUILD)
    assert str(err.value).startswith(f"{out}: the inputs in {raw} changed since this cache")
    assert "number of images 60 -> 61" in str(err.value) and "image bytes" in str(err.value)
    assert "rebuild=True (--rebuild)" in str(err.value) and "\n" not in str(err.value)
    extra.unlink()
    capsys.readouterr()
    build_cache(raw, out, workers=1, **BUILD)
    assert "complete and matches; nothing to do" in capsys.readouterr().out

    labels = pd.read_csv(raw / LABELS, dtype=str, keep_default_na=False)  # a box moved
    first_box = labels.index[labels.x != ""][0]
    labels.loc[first_box, "x"] = str(float(labels.x[first_box]) + 8)
    labels.to_csv(raw / LABELS, index=False)
    with pytest.raises(CacheError, match=rf"\(labels changed \({LABELS}\)\); pass rebuild"):
        build_cache(raw, out, workers=1, **BUILD)
    assert (out / "stats.json").read_text() == stats  # refused: untouched
    build_cache(raw, out, workers=1, rebuild=True, **BUILD)
    moved = read_index(out).set_index("patientId").boxes[labels.patientId[first_box]][0]
    old_x = float(pd.read_csv(demo_raw / LABELS).x[first_box])
    assert moved[0] == pytest.approx((old_x + 8) * 32 / 128, abs=0.01)

    # a cache made before fingerprints is reused as it is, with a note
    s = json.loads((out / "stats.json").read_text())
    del s["inputs"]
    (out / "stats.json").write_text(json.dumps(s))
    capsys.readouterr()
    build_cache(raw, out, workers=1, **BUILD)
    assert "made before input fingerprints: inputs not checked" in capsys.readouterr().out


def test_an_unfinished_build_from_other_inputs_is_refused(
    demo_raw: Path, cache32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "cache"
    shutil.copytree(demo_raw, raw)
    crash_after(2, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        build_cache(raw, out, workers=1, **BUILD)
    monkeypatch.undo()
    (raw / "stage_2_detailed_class_info.csv").write_text(
        (raw / "stage_2_detailed_class_info.csv").read_text() + "\n"
    )
    with pytest.raises(CacheError) as err:
        build_cache(raw, out, workers=1, **BUILD)
    assert str(err.value) == (
        f"{tmp_path / 'cache.partial'}: an unfinished build from other inputs (labels changed "
        "(stage_2_detailed_class_info.csv)) is here; pass --rebuild to discard it"
    )
    build_cache(raw, out, workers=1, rebuild=True, **BUILD)
    assert (out / "images.npy").read_bytes() == (cache32 / "images.npy").read_bytes()
