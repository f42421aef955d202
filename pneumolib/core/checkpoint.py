"""A run folder's checkpoints: saving them each epoch, loading them to resume (with the checks
made then) and to use the model (`load_run`, for evaluate, cam and predict).

Every write goes through `base.files.atomic_write` (unique temporary name, fsync, rename), so a
kill at any moment leaves either the old file or the new one, never half of one. `best.pt` is
written before `last.pt`: a kill between the two leaves a `best.pt` one epoch ahead of
`last.pt`, and `resume_best` picks that score up on resume, so the pair never disagrees for
good. A full disk ends in one line that names the file and the space it needs; the previous
file stays as it was. File names come from `base.rundir`.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pneumolib.base.config import Config
from pneumolib.base.errors import RunError
from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import (
    BEST,
    LAST,
    best_path,
    file_sha256,
    last_path,
    metrics_csv_path,
    record_checkpoint_config,
)
from pneumolib.core.models import load_checkpoint_model
from pneumolib.core.runtime import resolve_device
from pneumolib.data.cache_files import index_path
from pneumolib.data.cache_stats import CacheStats, read_stats


def atomic_save(obj: object, path: Path) -> str:
    """`torch.save(obj)` to `path` through `atomic_write` (serialised in memory first, so a
    full disk is an `OSError` with a size, not a torch stream error); returns the file's
    sha256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def write_metrics(history: list[dict], out: Path) -> None:
    """OUT/metrics.csv, one row per epoch, written whole through `atomic_write`."""
    atomic_write(metrics_csv_path(out), pd.DataFrame(history).to_csv(index=False).encode())


def save_epoch(ckpt: dict, out: Path, *, improved: bool) -> None:
    """Write an epoch's checkpoint: `best.pt` first when it improved, then `last.pt`; after
    each, its sha256 and config go into RUN/checkpoint_config.json (`base.rundir`), which the
    torch-free reports read."""
    for path in ([best_path(out)] if improved else []) + [last_path(out)]:
        sha = atomic_save(ckpt, path)
        record_checkpoint_config(out, path.name, sha256=sha, config=ckpt["config"])


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
        other = path.with_name(BEST if path.name == LAST else LAST)
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
    path = best_path(out)
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
    digest = hashlib.sha256(index_path(cache).read_bytes()).hexdigest()
    return {"index_sha256": digest, "size": read_stats(cache).size}


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


@dataclass(frozen=True)
class Run:
    """A trained run, loaded for use (evaluate, cam, predict): its checkpoint's model in eval
    mode on `device`, the Config it was trained with, and its training cache's pixel `stats`
    (`mean`, `std`, `size`, ...)."""

    folder: Path  # the run folder (the checkpoint's folder)
    checkpoint: Path  # the checkpoint file the model came from
    sha256: str  # of that file: the checkpoint's identity in metrics files and sidecars
    model: nn.Module  # (B, 1, H, W) -> (B, K) logits, eval mode, on `device`
    config: Config  # as trained (with `cache` replaced when the caller overrode it)
    stats: CacheStats  # the training cache's pixel statistics as stored in the checkpoint
    device: torch.device

    @property
    def task(self) -> str:
        """binary | three-class (`pneumolib.core.tasks`)."""
        return self.config.task


def load_run(
    path: str | Path,
    *,
    device: str | torch.device = "auto",
    cache: str | Path | None = None,
    checkpoint: str = BEST,
) -> Run:
    """RUN (its `checkpoint`, best.pt by default) or a checkpoint file -> `Run`. `device` as
    `runtime.resolve_device` takes it; `cache` replaces the cache folder recorded in the run
    (a moved run or cache)."""
    path = Path(path)
    is_file = path.is_file() or (not path.is_dir() and path.suffix in (".pt", ".pth"))
    ckpt = path if is_file else path / checkpoint
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint; train first (python -m pneumolib train)")
    dev = resolve_device(device) if isinstance(device, str) else device
    model, cfg, stats = load_checkpoint_model(ckpt, map_location=dev)
    if cache is not None:
        cfg = cfg.replace(cache=str(cache))
    return Run(
        folder=ckpt.parent,
        checkpoint=ckpt,
        sha256=file_sha256(ckpt),
        model=model,
        config=cfg,
        stats=stats,
        device=dev,
    )
