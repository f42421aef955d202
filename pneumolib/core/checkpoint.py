"""A run folder's files on disk: checkpoints, metrics.csv, and the checks made on resume.

Every write goes to a unique temporary name in the same folder, is fsync'ed, then renamed over
the old file (and the folder fsync'ed), so a kill at any moment leaves either the old file or
the new one, never half of one. `best.pt` is written before `last.pt`: a kill between the two
leaves a `best.pt` one epoch ahead of `last.pt`, and `resume_best` picks that score up on
resume, so the pair never disagrees for good. A full disk ends in one line that names the file
and the space it needs; the previous file stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch

from pneumolib.core.errors import PneumolibError


class RunError(PneumolibError, RuntimeError):
    """A run that cannot go on as asked; the message (one line) says why and what to do."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a unique temporary file beside `path`, fsync it, rename it over `path`.

    The space is checked first and a short write caught too: on a full disk, `RunError` naming
    `path` and the space it needs, with `path` as it was and no temporary file left behind.
    """
    path = Path(path)
    free = _free_bytes(path.parent)
    if free is not None and free < len(data):
        raise _disk_full(path, len(data), free)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, len(data), _free_bytes(path.parent)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _disk_full(path: Path, needed: int, free: int | None) -> RunError:
    left = f", {_mb(free)} free" if free is not None else ""
    return RunError(
        f"{path}: disk full while saving (needs {_mb(needed)}{left}); free space and re-run "
        "the same command to resume"
    )


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def atomic_save(obj: object, path: Path) -> None:
    """`torch.save(obj)` to `path` through `atomic_write` (serialised in memory first, so a
    full disk is an `OSError` with a size, not a torch stream error)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(Path(path), buf.getvalue())


def write_metrics(history: list[dict], out: Path) -> None:
    """OUT/metrics.csv, one row per epoch, written whole through `atomic_write`."""
    atomic_write(Path(out) / "metrics.csv", pd.DataFrame(history).to_csv(index=False).encode())


def save_epoch(ckpt: dict, out: Path, *, improved: bool) -> None:
    """Write an epoch's checkpoint: `best.pt` first when it improved, then `last.pt`."""
    if improved:
        atomic_save(ckpt, Path(out) / "best.pt")
    atomic_save(ckpt, Path(out) / "last.pt")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """`torch.load(path, weights_only=True)`, or one-line `RunError` for an empty, truncated or
    unreadable file saying what to do (the other checkpoint of the pair is left untouched)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError("not a pneumolib checkpoint")
        return ckpt
    except Exception as e:
        what = "empty (0 bytes)" if size == 0 else f"unreadable ({type(e).__name__}, {size} bytes)"
        other = path.with_name("best.pt" if path.name == "last.pt" else "last.pt")
        hint = (
            f"{other.name} is kept: copy it over {path.name} to resume from it, or delete "
            f"{path.parent} to start over"
            if other.exists()
            else f"delete {path.parent} to start over"
        )
        raise RunError(f"{path}: checkpoint is {what}; {hint}") from None


def resume_best(out: Path, best: float, best_loss: float) -> tuple[float, float]:
    """The best score and its val loss on resume: `last.pt`'s, unless a kill between the two
    saves left a `best.pt` one epoch ahead, whose score then counts."""
    path = Path(out) / "best.pt"
    if not path.exists():
        return best, best_loss
    ahead = load_checkpoint(path)
    if ahead.get("best", -float("inf")) > best:
        return float(ahead["best"]), float(ahead.get("best_loss", best_loss))
    return best, best_loss


def cache_identity(cache: str | Path) -> dict:
    """What a run is tied to in its cache: the hash of index.csv (patients, rows, labels,
    split) and the image size. Recorded in every checkpoint, compared on resume."""
    cache = Path(cache)
    digest = hashlib.sha256((cache / "index.csv").read_bytes()).hexdigest()
    stats = json.loads((cache / "stats.json").read_text())
    return {"index_sha256": digest, "size": int(stats["size"])}


def check_same_cache(ckpt: dict, cache: str | Path, out: Path) -> None:
    """Refuse to resume `out` on a cache other than the one its checkpoint was trained on."""
    saved = ckpt.get("cache")
    if saved is None:  # a checkpoint from before this check: nothing to compare
        return
    now = cache_identity(cache)
    if saved != now:
        what = "image size" if saved["size"] != now["size"] else "images, labels or split"
        raise RunError(
            f"{out}: was trained on another cache ({cache} differs in {what}); "
            "choose a new --out, or rebuild the cache it was trained on"
        )


def rng_state() -> dict:
    """Python and torch (and CUDA) random states, for a checkpoint."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
