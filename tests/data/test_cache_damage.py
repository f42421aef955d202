"""A cache that notices damage: stats.json records the size of images.npy and the hash of
index.csv; preprocess, train, evaluate, cam and tune refuse a cache that no longer matches, in
one line naming the file and the `preprocess --rebuild` command (`data.cache_check`)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from pneumolib.cli import main
from pneumolib.data import preprocess as pre
from pneumolib.data.cache_check import CacheDamaged, seal_cache, verify_cache
from pneumolib.data.cache_stats import read_stats
from pneumolib.data.labels import open_cache, open_images
from pneumolib.data.synth import make_demo_data

N, SIZE, CACHE = 40, 64, 32  # every split has a positive (as in test_faults)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("damage") / "raw", n=N, size=SIZE, seed=2)


@pytest.fixture(scope="module")
def whole(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished cache (read-only: tests damage copies)."""
    out = tmp_path_factory.mktemp("damage") / "cache"
    return pre.build_cache(raw, out, size=CACHE, workers=0, progress=False)


def truncate_images(cache: Path) -> int:
    """Cut images.npy to half its size (a copy cut short); returns the size it had."""
    path = cache / "images.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data)


def delete_a_row(cache: Path) -> None:
    """Delete the last patient's row from index.csv, leaving everything else as it was."""
    path = cache / "index.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


DAMAGES = {"truncated-images": truncate_images, "deleted-row": delete_a_row}
NAMES = {"truncated-images": "images.npy", "deleted-row": "index.csv"}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, whole: Path, tmp_path: Path) -> tuple[Path, str]:
    """(a damaged copy of the cache, the file that was damaged)."""
    cache = tmp_path / "cache"
    shutil.copytree(whole, cache)
    DAMAGES[request.param](cache)
    return cache, NAMES[request.param]


def test_stats_record_the_size_of_images_and_the_hash_of_index(whole: Path) -> None:
    stats = read_stats(whole)
    assert stats.images_bytes == (whole / "images.npy").stat().st_size
    assert stats.index_sha256 is not None and len(stats.index_sha256) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recorded, whole cache: no note either
        assert verify_cache(whole) == stats
    index, opened = open_cache(whole)
    assert len(index) == stats.n and opened == stats


def test_damage_is_one_line_naming_the_file_and_the_rebuild(damaged, raw: Path) -> None:
    cache, name = damaged
    with pytest.raises(CacheDamaged) as err:
        open_cache(cache)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{cache / name}: ")
    assert f"preprocess --raw {raw.resolve()} --out {cache} --size {CACHE} --rebuild" in msg
    if name == "images.npy":
        size = (cache / name).stat().st_size
        assert f"{size:,} bytes, stats.json recorded {2 * size:,}" in msg
    else:
        assert f"{N - 1} rows, changed since stats.json recorded its hash of {N} rows" in msg


def test_preprocess_refuses_a_damaged_cache_and_rebuild_makes_it_whole(
    damaged, raw: Path, whole: Path, capsys: pytest.CaptureFixture
) -> None:
    cache, name = damaged
    args = ["preprocess", "--raw", str(raw), "--out", str(cache), "--size", str(CACHE)]
    assert main([*args, "--workers", "0"]) == 2  # was: "complete and matches; nothing to do"
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cache / name}: ")
    assert "--rebuild" in lines[0] and "nothing to do" not in captured.out
    assert main([*args, "--workers", "0", "--rebuild"]) == 0
    for f in ("images.npy", "index.csv"):
        assert (cache / f).read_bytes() == (whole / f).read_bytes(), f
    verify_cache(cache)
    assert main([*args, "--workers", "0"]) == 0  # whole again: reused
    assert "complete and matches" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "tune"])
def test_train_and_tune_refuse_a_damaged_cache(
    damaged, command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache, name = damaged
    out = tmp_path / "out"
    args = [command, "--cache", str(cache), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--weights", "none", "--workers", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cache / name}: ")
    assert "--rebuild" in lines[0]
    assert not any(out.rglob("*.pt"))  # refused before training


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "cam"])
def test_evaluate_and_cam_refuse_a_damaged_cache(
    damaged, command: str, demo_run: Path, tmp_path: Path
) -> None:
    from pneumolib.cam.run import cam_run
    from pneumolib.evaluate.run import evaluate_run

    cache, name = damaged
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(CacheDamaged, match=f"^{cache / name}: .*--rebuild$"):
        if command == "evaluate":
            evaluate_run(run, "val", cache=cache, device="cpu")
        else:
            cam_run(run, "val", cache=cache, device="cpu", progress=False)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_a_cache_made_before_the_record_is_accepted_with_a_note(whole: Path, tmp_path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(whole, cache)
    d = json.loads((cache / "stats.json").read_text())
    for key in ("images_bytes", "index_sha256"):
        del d[key]
    (cache / "stats.json").write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="made before .*--rebuild adds them"):
        verify_cache(cache)
    delete_a_row(cache)  # its rows are still counted against n
    with pytest.raises(CacheDamaged, match=f"index.csv: {N - 1} rows, stats.json recorded {N}"):
        verify_cache(cache)
    shutil.copy(whole / "index.csv", cache / "index.csv")
    truncate_images(cache)  # no size recorded: opening the memory map names the file
    with pytest.warns(UserWarning):
        verify_cache(cache)
    with pytest.raises(CacheDamaged, match=r"images.npy: mmap length .*--rebuild$"):
        open_images(cache)


def test_a_missing_cache_says_run_preprocess_and_seal_accepts_a_hand_edit(whole, tmp_path):
    with pytest.raises(FileNotFoundError, match="index.csv: no cache index; run"):
        verify_cache(tmp_path / "nowhere")
    cache = tmp_path / "cache"
    shutil.copytree(whole, cache)
    delete_a_row(cache)
    with pytest.raises(CacheDamaged):
        verify_cache(cache)
    assert seal_cache(cache).index_sha256 != read_stats(whole).index_sha256
    verify_cache(cache)  # edited on purpose, then sealed (as tests and benchmarks do)
