"""Run folders after faults: a kill inside a save, a truncated checkpoint, a full disk, another
cache on resume, a val split without positives."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from pneumolib import checkpoint
from pneumolib.checkpoint import RunError, atomic_save
from pneumolib.config import demo_config
from pneumolib.preprocess import build_cache
from pneumolib.synth import make_demo_data
from pneumolib.train import fit

KW = dict(epochs=2, deterministic=True, max_steps_per_epoch=2, batch_size=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    raw = make_demo_data(d / "raw", n=120, size=128, seed=5, realism="easy")
    return build_cache(raw, d / "cache", size=64, workers=1, progress=False)


def _cfg(cache: Path, out: Path, **kw):
    kw = {"cache_size": 64, "image_size": 64, **KW} | kw
    return demo_config(out.parent, cache=str(cache), out=str(out), workers=0, **kw)


def _stop_after_epoch_1(event: str, state: dict) -> None:
    if event == "epoch" and state["epoch"] == 0:
        raise KeyboardInterrupt


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `except Exception`)."""


def test_kill_between_best_and_last_resumes_to_the_uninterrupted_pair(cache, tmp_path, monkeypatch):
    fit(_cfg(cache, tmp_path / "a"), progress=False)
    real_replace, calls = checkpoint.os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "last.pt" and calls.count("last.pt") == 2:
            raise Killed  # epoch 2: best.pt (if it improved) is written, last.pt is not
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(Killed):
        fit(_cfg(cache, tmp_path / "b"), progress=False)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert _load(tmp_path / "b" / "last.pt")["epoch"] == 0
    fit(_cfg(cache, tmp_path / "b"), progress=False)  # the same call again
    for name in ("best.pt", "last.pt"):
        a, b = _load(tmp_path / "a" / name), _load(tmp_path / "b" / name)
        assert a["epoch"] == b["epoch"] and a["best"] == b["best"], name
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    assert not list((tmp_path / "b").glob("*.tmp")), "a killed save leaves no temporary file"


def test_a_kill_inside_the_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 0}, tmp_path / "last.pt")

    def killed(fd):
        raise Killed  # the new bytes are in the temporary file, not yet renamed

    monkeypatch.setattr(checkpoint.os, "fsync", killed)
    with pytest.raises(Killed):
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 1}, tmp_path / "last.pt")
    assert _load(tmp_path / "last.pt")["epoch"] == 0


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_last_pt_is_named_and_best_pt_kept(cache, tmp_path, damage):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(cache, out), callback=_stop_after_epoch_1, progress=False)
    last = out / "last.pt"
    data = last.read_bytes()
    last.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    best = (out / "best.pt").read_bytes()
    with pytest.raises(RunError) as e:
        fit(_cfg(cache, out), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(last) in msg and "best.pt is kept" in msg
    assert ("0 bytes" in msg) == (damage == "empty")
    assert (out / "best.pt").read_bytes() == best


def test_resume_on_another_cache_is_refused(cache, tmp_path):
    other = tmp_path / "cache"
    shutil.copytree(cache, other)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(other, out), callback=_stop_after_epoch_1, progress=False)
    index = pd.read_csv(other / "index.csv")
    index.loc[index.index[:4], "split"] = "test"  # the same folder, another split
    index.to_csv(other / "index.csv", index=False)
    with pytest.raises(RunError, match="another cache"):
        fit(_cfg(other, out), progress=False)


def test_auc_undefined_falls_back_to_val_loss_and_writes_best(cache, tmp_path):
    """A val split without positives (built by hand: the cache builder refuses one)."""
    other = tmp_path / "cache"
    shutil.copytree(cache, other)
    index = pd.read_csv(other / "index.csv")
    index = index[~((index.split == "val") & (index.target == 1))]
    index.to_csv(other / "index.csv", index=False)
    out = tmp_path / "run"
    summary = fit(_cfg(other, out), progress=False)
    hist = pd.read_csv(out / "metrics.csv")
    assert hist["val_auc"].isna().all()
    assert summary["best"] == pytest.approx(-hist["val_loss"].min())
    assert _load(out / "best.pt")["epoch"] == int(hist["val_loss"].idxmin())


@pytest.mark.parametrize("where", ["before", "during"])
def test_full_disk_on_save_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, where):
    """`before`: the free-space check refuses; `during`: the file system reports ENOSPC late
    (at fsync, as delayed allocation does)."""
    atomic_save({"model": {"w": torch.ones(1000)}, "epoch": 0}, tmp_path / "last.pt")
    if where == "before":
        monkeypatch.setattr(checkpoint, "_free_bytes", lambda folder: 100)
    else:

        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint.os, "fsync", no_space)
    with pytest.raises(RunError) as e:
        atomic_save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, tmp_path / "last.pt")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "last.pt") in msg and "MB" in msg
    assert _load(tmp_path / "last.pt")["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_training_on_a_full_filesystem_ends_in_one_line(cache, tmp_path):
    """A real full disk: a tmpfs with room for one epoch's pair of checkpoints, not more."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = tmp_path / "probe"
    fit(_cfg(cache, probe, epochs=1), progress=False)
    size = (probe / "last.pt").stat().st_size
    opts = f"size={int(size * 2.5)}"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(RunError) as e:
            fit(_cfg(cache, mnt / "run", epochs=3), progress=False)
        msg = str(e.value)
        assert "\n" not in msg and "disk full" in msg and str(mnt / "run") in msg
        ckpt = _load(mnt / "run" / "last.pt")  # epoch 1's checkpoint is whole
        assert ckpt["epoch"] == 0
        assert not list((mnt / "run").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])  # lazy: tensorboard may hold a file


def test_cli_turns_an_os_error_into_one_line(monkeypatch, capsys):
    from pneumolib import cli

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache.partial/images.npy")

    monkeypatch.setattr(cli, "run", full)
    assert cli.main(["preprocess"]) == 1
    err = capsys.readouterr().err
    assert err == "error: /data/cache.partial/images.npy: No space left on device\n"
