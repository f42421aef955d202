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

from pneumolib.base import files
from pneumolib.base.config import demo_config
from pneumolib.base.errors import RunError
from pneumolib.core.checkpoint import atomic_save
from pneumolib.data.cache_check import seal_cache
from pneumolib.data.preprocess import build_cache
from pneumolib.data.synth import make_demo_data
from pneumolib.train.loop import fit

# Feature extraction: the checkpoint mechanics are the same, the steps and files much smaller.
KW = dict(
    epochs=2, deterministic=True, max_steps_per_epoch=2, batch_size=16, mode="feature-extraction"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    raw = make_demo_data(d / "raw", n=120, size=128, seed=5, realism="easy")
    return build_cache(raw, d / "cache", size=64, workers=1, progress=False)


@pytest.fixture(scope="module")
def ref_run(cache, tmp_path_factory) -> Path:
    """A finished, uninterrupted run: the reference the faulted runs are compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    fit(_cfg(cache, out), progress=False)
    return out


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


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 4], ids=["first-save-of-epoch-2", "second-save"])
def test_a_kill_at_either_save_resumes_to_the_uninterrupted_pair(
    cache, ref_run, tmp_path, monkeypatch, kill_at
):
    """Epoch 2 improves, so it writes both checkpoints; a kill at the first rename or between
    the two must resume to the same pair as a run never killed (a stale best.pt would not)."""
    real_replace, renames = files.os.replace, []

    def replace(src, dst):
        if Path(dst).suffix == ".pt":
            renames.append(Path(dst).name)
            if len(renames) == kill_at:
                raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(Killed):
        fit(_cfg(cache, tmp_path / "b"), progress=False)
    monkeypatch.setattr(files.os, "replace", real_replace)
    written = {n: _load(tmp_path / "b" / n)["epoch"] for n in ("best.pt", "last.pt")}
    assert sorted(written.values()) == ([0, 0] if kill_at == 3 else [0, 1]), written
    fit(_cfg(cache, tmp_path / "b"), progress=False)  # the same call again
    for name in ("best.pt", "last.pt"):
        a, b = _load(ref_run / name), _load(tmp_path / "b" / name)
        assert a["epoch"] == b["epoch"] and a["best"] == b["best"], name
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    assert not list((tmp_path / "b").glob(".*.tmp")), "a killed save leaves no temporary file"


def test_a_kill_inside_the_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 0}, tmp_path / "last.pt")

    def killed(fd):
        raise Killed  # the new bytes are in the temporary file, not yet renamed

    monkeypatch.setattr(files.os, "fsync", killed)
    with pytest.raises(Killed):
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 1}, tmp_path / "last.pt")
    assert _load(tmp_path / "last.pt")["epoch"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_last_pt_is_named_and_best_pt_kept(cache, ref_run, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(ref_run, out)
    last = out / "last.pt"
    data = last.read_bytes()
    last.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    best = (out / "best.pt").read_bytes()
    with pytest.raises(RunError) as e:
        fit(_cfg(cache, out), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(last) in msg and "best.pt is kept" in msg
    assert ("empty (0 bytes)" in msg) == (damage == "empty")  # not "…10 bytes"
    assert (out / "best.pt").read_bytes() == best


@pytest.mark.slow
def test_resume_on_another_cache_is_refused(cache, ref_run, tmp_path):
    other, out = tmp_path / "cache", tmp_path / "run"
    shutil.copytree(cache, other)
    shutil.copytree(ref_run, out)
    index = pd.read_csv(other / "index.csv")
    index.loc[index.index[:4], "split"] = "test"  # the same images, another split
    index.to_csv(other / "index.csv", index=False)
    seal_cache(other)  # a whole cache, just not the run's
    with pytest.raises(RunError, match="another cache"):
        fit(_cfg(other, out), progress=False)
    fit(_cfg(cache, out), progress=False)  # its own cache, moved or not: accepted


@pytest.mark.slow
def test_auc_undefined_falls_back_to_val_loss_and_writes_best(cache, tmp_path):
    """A val split without positives (built by hand: the cache builder refuses one)."""
    other = tmp_path / "cache"
    shutil.copytree(cache, other)
    index = pd.read_csv(other / "index.csv")
    index = index[~((index.split == "val") & (index.target == 1))]
    index.to_csv(other / "index.csv", index=False)
    seal_cache(other)
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
        monkeypatch.setattr(files, "_free_bytes", lambda folder: 100)
    else:

        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(RunError) as e:
        atomic_save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, tmp_path / "last.pt")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "last.pt") in msg and "MB" in msg
    assert _load(tmp_path / "last.pt")["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.slow
def test_training_on_a_full_filesystem_ends_in_one_line(cache, ref_run, tmp_path):
    """A real full disk: a tmpfs with room for one epoch's pair of checkpoints, not more."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = (ref_run / "last.pt").stat().st_size
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


def test_load_run_reads_an_older_checkpoint_through_config_from_dict(tmp_path):
    """A checkpoint whose config predates `task` (and holds a key since removed) loads as a
    typed Run: the Config's defaults fill in, the model is in eval mode on the device."""
    from pneumolib.base.config import Config
    from pneumolib.base.rundir import file_sha256
    from pneumolib.core.checkpoint import load_run
    from pneumolib.core.models import build_model

    model = build_model("resnet18", "scratch", "none")
    old = {k: v for k, v in Config(mode="scratch", amp=False).to_dict().items() if k != "task"}
    stats = {"mean": 0.5, "std": 0.25, "size": 64}
    ckpt = {"model": model.state_dict(), "config": old | {"gone": 1}, "stats": stats}
    torch.save(ckpt, tmp_path / "best.pt")
    run = load_run(tmp_path, device="cpu", cache=tmp_path / "moved")
    assert isinstance(run.config, Config) and run.task == "binary" and run.config.amp is False
    assert run.config.cache == str(tmp_path / "moved") and run.stats.to_dict() == stats
    assert run.folder == tmp_path and run.checkpoint == tmp_path / "best.pt"
    assert run.sha256 == file_sha256(tmp_path / "best.pt") and not run.model.training
    assert load_run(tmp_path / "best.pt").checkpoint == run.checkpoint  # a file works too
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_run(tmp_path / "nowhere")
