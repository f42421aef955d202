"""The trainer: `fit(cfg)` trains (or resumes) a run folder; also runs under `torchrun` (DDP).

Per epoch: a progress bar over optimiser steps (each step may accumulate several micro-batches
so that an effective batch of 1,024 fits a small GPU), validation (loss, AUC, accuracy,
precision, recall), one summary line, a row in metrics.csv, and `last.pt` / `best.pt` written
atomically with everything needed to continue: model, optimiser, scheduler, scaler, epoch,
RNG states and the whole config. Re-running the same call continues from `last.pt`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
import torch.distributed as dist

from pneumolib.base.config import EXACT, PATH, STOPPING, Config, field_names
from pneumolib.base.errors import RunError, UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.metrics import binary_summary
from pneumolib.base.owner import check_owner
from pneumolib.base.progress import bar as progress_bar
from pneumolib.base.rundir import DDP_CHECK, config_path, last_path
from pneumolib.core import tasks
from pneumolib.core.checkpoint import (
    cache_identity,
    check_same_cache,
    load_checkpoint,
    resume_best,
    rng_state,
    save_epoch,
    set_rng_state,
    write_metrics,
)
from pneumolib.core.loader import EpochBatchSampler
from pneumolib.core.runtime import predict_logits, resolve_device
from pneumolib.train.best_epoch import epoch_score, improves
from pneumolib.train.setup import TrainSetup, optimiser_step, prepare_training, seed_everything

# Fields that may differ when a run is resumed: paths, speed with the same numbers, and the
# early-stopping rule (`epochs` is not one: the learning-rate schedule spans the whole run).
RESUMABLE_CHANGES = frozenset(field_names(PATH, EXACT, STOPPING))


# --- small pieces ------------------------------------------------------------------------


def _check_resume(saved: dict, cfg: Config, out: Path) -> None:
    diff = {
        k: (saved.get(k), v)
        for k, v in cfg.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved.get(k) != v
    }
    if diff:
        raise RunError(
            f"{out}: holds a run with other settings {diff}; choose a new --out "
            "or delete the folder to start over"
        )


@dataclass
class RunState:
    """Where a run stands between epochs (what `last.pt` carries besides the weights)."""

    start_epoch: int = 0
    best: float = -math.inf
    best_loss: float = math.inf
    stale: int = 0
    history: list[dict] = field(default_factory=list)

    def record(self, row: dict, monitor: str) -> bool:
        """Add an epoch's row; True when it is the best so far on `monitor`."""
        self.history.append(row)
        score = epoch_score(row, monitor)
        improved = improves(score, row["val_loss"], self.best, self.best_loss)  # best_epoch's rule
        if improved:
            self.best, self.best_loss = score, row["val_loss"]
        self.stale = 0 if improved else self.stale + 1
        return improved


def _join_processes(cfg: Config) -> tuple[torch.device, int, int]:
    """(device, rank, world): under torchrun (WORLD_SIZE > 1) join the process group."""
    device = resolve_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return device, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device, dist.get_rank(), dist.get_world_size()


def resume_run(s: Any, out: Path) -> RunState:
    """Load `last.pt` into the setup `s` (a `TrainSetup`, or the detector's: anything with
    model, opt, sched, scaler, cfg, device), refused for other settings or another cache."""
    ckpt = load_checkpoint(last_path(out), map_location=s.device)
    _check_resume(ckpt["config"], s.cfg, out)
    check_same_cache(ckpt, s.cfg.cache, out)
    s.model.load_state_dict(ckpt["model"])
    s.opt.load_state_dict(ckpt["optimizer"])
    s.sched.load_state_dict(ckpt["scheduler"])
    s.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = RunState(
        start_epoch=ckpt["epoch"] + 1,
        best=ckpt["best"],
        best_loss=ckpt.get("best_loss", math.inf),
        stale=ckpt.get("stale", 0),
        history=list(ckpt["history"]),
    )
    state.best, state.best_loss = resume_best(out, state.best, state.best_loss)
    return state


def epoch_steps(
    s: Any, epoch: int, bar, callback, *, step: Callable[[Any, list], tuple[float, int]],
    module: torch.nn.Module,
) -> float:  # fmt: skip
    """One epoch of optimiser steps of setup `s` (the classifier's, or the detector's), each
    `step(s, micro_batches) -> (loss summed over its images, images)`, with `module` in train
    mode -> the mean training loss per image."""
    cast(EpochBatchSampler, s.train_loader.sampler).set_epoch(epoch)  # make_loader's
    module.train()
    batches = iter(s.train_loader)
    run_loss, seen = 0.0, 0
    for i in range(s.steps_per_epoch):
        micro_batches = [b for _, b in zip(range(s.accum), batches, strict=False)]
        if not micro_batches:
            break
        loss, n = step(s, micro_batches)
        run_loss, seen = run_loss + loss, seen + n
        s.sched.step()
        bar.update()
        lr = f"{s.sched.get_last_lr()[0]:.2e}"
        bar.set_postfix(loss=f"{run_loss / seen:.4f}", lr=lr, refresh=False)
        if callback:
            callback("step", {"epoch": epoch, "step": i})
    return run_loss / max(seen, 1)


def _train_epoch(s: TrainSetup, epoch: int, bar, callback) -> float:
    """One epoch of optimiser steps -> mean training loss."""
    loss = epoch_steps(s, epoch, bar, callback, step=optimiser_step, module=s.net)
    if s.distributed:  # BN running stats drift per rank after the last forward: take rank 0's
        for buf in s.model.buffers():
            dist.broadcast(buf, 0)
    return loss


def _validate(s: TrainSetup, epoch: int, train_loss: float, t0: float) -> dict:
    """Validation metrics of the epoch -> its metrics.csv row."""
    logits, y, _ = predict_logits(
        s.model,
        s.val_loader,
        device=s.device,
        size=s.cfg.image_size,
        stats=s.stats,
        amp=s.dtype,
        channels_last=s.channels_last,
    )
    logits_t = torch.from_numpy(logits).double()
    val_loss = tasks.loss(logits_t, torch.from_numpy(y), None)  # unweighted, as in every run
    p = tasks.pneumonia_probability(logits_t).numpy()
    summary = binary_summary(tasks.task_spec(s.cfg.task).is_pneumonia(y), p)
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": float(val_loss),
        **{f"val_{k}": v for k, v in summary.items()},
        "lr": s.sched.get_last_lr()[0],
        "seconds": time.perf_counter() - t0,
    }


def epoch_checkpoint(s: Any, state: RunState, row: dict, cache_id: dict) -> dict:
    """What `last.pt`/`best.pt` hold after an epoch, for a setup `s` as `resume_run` takes."""
    return {
        "model": s.model.state_dict(),
        "optimizer": s.opt.state_dict(),
        "scheduler": s.sched.state_dict(),
        "scaler": s.scaler.state_dict(),
        "epoch": row["epoch"] - 1,
        "config": s.cfg.to_dict(),
        "stats": s.stats.for_checkpoint(),
        "metrics": row,
        "best": state.best,
        "best_loss": state.best_loss,
        "stale": state.stale,
        "history": state.history,
        "rng": rng_state(),
        "cache": cache_id,
    }


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    return (
        f"epoch {row['epoch']:3d}/{epochs}  loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  auc {row['val_auc']:.4f}  "
        f"acc {row['val_accuracy']:.3f}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s" + ("  *" if improved else "")
    )


def fit(
    cfg: Config,
    callback: Callable[[str, dict], None] | None = None,
    progress: bool = True,
    *,
    owner: str | None = None,
) -> dict:
    """Train (or resume) the run in `cfg.out` on the cache `cfg.cache`; returns a summary.

    `callback(event, state)` is called with "step" after each optimiser step and "epoch" after
    each epoch (tests use it to interrupt a run). Under torchrun (RANK/WORLD_SIZE set) the model
    is wrapped in DistributedDataParallel and only rank 0 writes the run folder. `owner`: a
    sweep worker's token (`core.owner.claim_run`); each epoch's files are written only while
    RUN/owner.json still holds it, else `TakenOver` ends the run with nothing more written.
    """
    if cfg.kind != "classifier":
        raise UsageError(f"{cfg.out}: a {cfg.kind} run; `python -m pneumolib detect` trains it")
    device, rank, world = _join_processes(cfg)
    main, out = rank == 0, Path(cfg.out)
    seed_everything(cfg.seed, cfg.deterministic)
    resuming = last_path(out).exists()  # then the weights come from last.pt, not a download
    s = prepare_training(cfg, device, rank=rank, world=world, weights="none" if resuming else None)
    state = resume_run(s, out) if resuming else RunState()
    if main and resuming:
        print(f"resuming {out} after epoch {state.start_epoch} of {cfg.epochs}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(config_path(out))
    cache_id = cache_identity(cfg.cache)
    writer = _tensorboard(out) if main else None
    # One bar for the whole run (not one per epoch): its ETA is the run's, and its redraws stay
    # bounded however many epochs there are (see pneumolib.base.progress).
    bar = progress_bar(
        total=cfg.epochs * s.steps_per_epoch,
        initial=state.start_epoch * s.steps_per_epoch,
        desc="train",
        unit="step",
        disable=not (progress and main),
        leave=False,
    )
    for epoch in range(state.start_epoch, cfg.epochs):
        if cfg.patience and state.stale >= cfg.patience:
            if main:
                bar.write(f"early stop: {cfg.monitor} has not improved for {state.stale} epochs")
            break
        t0 = time.perf_counter()
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        row = _validate(s, epoch, _train_epoch(s, epoch, bar, callback), t0)
        improved = state.record(row, cfg.monitor)
        if main:
            bar.write(_epoch_line(row, cfg.epochs, improved))
            if owner is not None:  # a sweep trial taken over by another worker: stop unwritten
                check_owner(out, owner)
            save_epoch(epoch_checkpoint(s, state, row, cache_id), out, improved=improved)
            write_metrics(state.history, out)
            if writer:
                for k, v in row.items():
                    writer.add_scalar(k, v, epoch + 1)
        if callback:
            callback("epoch", {"epoch": epoch, "metrics": row})
    bar.close()
    return _summary(s, state, out, world, writer)


def _summary(s: TrainSetup, state: RunState, out: Path, world: int, writer) -> dict:
    summary = {
        "out": str(out),
        "epochs": len(state.history),
        "best": state.best,
        "monitor": s.cfg.monitor,
        "history": pd.DataFrame(state.history),
    }
    if s.distributed:
        summary["rank_checksums"] = _rank_checksums(s.model, world)
        if dist.get_rank() == 0:
            atomic_write(out / DDP_CHECK, json.dumps(summary["rank_checksums"]))
        dist.barrier()
    if writer:
        writer.close()
    return summary


def _rank_checksums(model: torch.nn.Module, world: int) -> list[float]:
    s = torch.tensor(
        [
            sum(
                float(p.double().sum())
                for p in model.state_dict().values()
                if p.is_floating_point()
            )
        ],
        dtype=torch.float64,
    )
    out = [torch.zeros_like(s) for _ in range(world)]
    dist.all_gather(out, s)
    return [float(t) for t in out]


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: a missing one is fine
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))
