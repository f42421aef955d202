"""The detector's trainer: `fit_detector(cfg)` trains (or resumes) a detector run folder with the
classifier's conventions.

The run folder is the classifier's: config.json (saying `"kind": "detector"`), metrics.csv (one
row per epoch: train loss, val loss, val rsna_map at the val-chosen confidence cut, the image-level
val AUC), and `last.pt` / `best.pt` written atomically (`core.checkpoint`) with everything needed
to continue; best is the epoch with the highest val rsna_map (`train.best_epoch`'s rule).
Re-running the same call continues from `last.pt`, exactly (CPU, `deterministic`). The loaders,
sampler, augmentation streams, optimiser, schedule and mixed precision are the classifier's
(`core.loader`, `core.augment`, `train.setup`); a Ctrl-C leaves the last whole epoch to resume.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pneumolib.base.config import Config
from pneumolib.base.errors import RunError
from pneumolib.base.progress import bar as progress_bar
from pneumolib.base.rundir import config_path, last_path
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.checkpoint import (
    cache_identity,
    save_epoch,
    write_metrics,
)
from pneumolib.core.loader import make_loader
from pneumolib.core.runtime import amp_dtype, resolve_device, warp_on_device
from pneumolib.data.labels import CacheStats, open_cache
from pneumolib.detect.batches import Boxes, box_targets, detector_input
from pneumolib.detect.model import box_label, detector_for
from pneumolib.detect.score import split_boxes, val_row
from pneumolib.train.loop import RunState, epoch_checkpoint, epoch_steps, resume_run
from pneumolib.train.setup import make_optimizer, make_scheduler, seed_everything

MONITOR = "rsna_map"  # a detector run's best epoch: the highest val rsna_map


def as_detector(cfg: Config) -> Config:
    """`cfg` as a detector run records it: kind "detector", judged on val rsna_map. Refuses
    a label other than pneumonia (the boxes are pneumonia's)."""
    if cfg.label != "pneumonia":
        raise RunError(f"a detector learns the pneumonia boxes, not --label {cfg.label}")
    return cfg.replace(kind="detector", monitor=MONITOR)


@dataclass
class DetectSetup:
    """Everything a detector's training step and validation need, built once."""

    cfg: Config
    device: torch.device
    stats: CacheStats
    policy: AugmentPolicy
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    train_boxes: list[Boxes]  # expert boxes per train row (cache pixels)
    val_ids: list[str]
    val_boxes: list[Boxes]
    val_targets: np.ndarray  # (N_val,) 0/1
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    accum: int  # micro-batches per optimiser step
    steps_per_epoch: int
    on_device: bool  # the warp runs on the device (`runtime.warp_on_device`)


def prepare_detector(
    cfg: Config, device: torch.device, *, weights: str | None = None
) -> DetectSetup:
    """Loaders (raw uint8 batches: `detector_input` warps them and keeps the matrices), model,
    optimiser, schedule and precision for detector run `cfg` on `device`."""
    index, stats = open_cache(cfg.cache)  # refused when damaged since preprocess
    train_idx = index[index.split == "train"].reset_index(drop=True)
    val_idx = index[index.split == "val"].reset_index(drop=True)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise RunError(
            f"{cfg.cache}: needs train and val rows (got {len(train_idx)}, {len(val_idx)})"
        )
    micro = cfg.micro_batch_size or cfg.batch_size
    if cfg.batch_size % micro:
        raise RunError(f"batch size {cfg.batch_size} is not a multiple of micro-batch {micro}")
    on_device = warp_on_device(device, gpu_augment=cfg.gpu_augment)
    policy = AugmentPolicy.from_config(cfg)
    shared: dict[str, Any] = {
        "out_size": cfg.image_size,
        "policy": policy,
        "seed": cfg.seed,
        "workers": cfg.workers,
        "warp_in_worker": False,  # the matrices must reach the boxes: warped in this process
        "pin_memory": device.type == "cuda",
    }
    train_loader = make_loader(
        cfg.cache, train_idx, batch_size=micro, train=True, balanced=cfg.balanced_sampling, **shared
    )
    val_loader = make_loader(
        cfg.cache, val_idx, batch_size=cfg.eval_batch_size, train=False, **shared
    )
    accum = cfg.batch_size // micro
    steps = math.ceil(len(train_loader) / accum)
    steps = min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps
    model = detector_for(cfg, stats, weights=weights).to(device)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    dtype = amp_dtype(device, cfg.amp)
    return DetectSetup(
        cfg=cfg,
        device=device,
        stats=stats,
        policy=policy,
        train_loader=train_loader,
        val_loader=val_loader,
        train_boxes=list(train_idx["boxes"]),
        val_ids=list(val_idx["patientId"].astype(str)),
        val_boxes=list(val_idx["boxes"]),
        val_targets=val_idx["target"].to_numpy().astype(int),
        model=model,
        opt=opt,
        sched=make_scheduler(opt, cfg, steps),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype,
        accum=accum,
        steps_per_epoch=steps,
        on_device=on_device,
    )


def detector_step(s: DetectSetup, micro_batches: list[dict]) -> tuple[float, int]:
    """One optimiser step over `micro_batches` (loader batches) -> (summed loss, images). Each
    micro-batch's loss (torchvision's, a mean over its images) is weighted by its share of the
    step's images, so accumulating equals one big batch."""
    n_step = sum(len(b["position"]) for b in micro_batches)
    s.opt.zero_grad(set_to_none=True)
    total = 0.0
    for b in micro_batches:
        x, mats = detector_input(
            b,
            s.device,
            size=s.cfg.image_size,
            policy=s.policy,
            train=True,
            seed=s.cfg.seed,
            on_device=s.on_device,
        )
        boxes = [s.train_boxes[i] for i in b["position"].numpy()]
        targets = box_targets(
            boxes, mats, size=s.cfg.image_size, label=box_label(), device=s.device
        )
        with torch.autocast(s.device.type, dtype=s.dtype, enabled=s.dtype is not None):
            losses = s.model(x, targets)
        loss = sum(v.float() for v in losses.values()) * (len(x) / n_step)
        s.scaler.scale(loss).backward()
        total += float(loss.detach()) * n_step
    s.scaler.step(s.opt)
    s.scaler.update()
    return total, n_step


def _train_epoch(s: DetectSetup, epoch: int, bar, callback) -> float:
    """One epoch of optimiser steps -> mean training loss per image."""
    return epoch_steps(s, epoch, bar, callback, step=detector_step, module=s.model)


def _validate(s: DetectSetup, epoch: int, train_loss: float, t0: float) -> dict:
    """The epoch's metrics.csv row: train loss, then the val columns (`score.val_row`)."""
    found = split_boxes(
        s.model,
        s.val_loader,
        ids=s.val_ids,
        boxes=s.val_boxes,
        device=s.device,
        size=s.cfg.image_size,
        cache_size=s.stats.size,
        label=box_label(),
        amp=s.dtype,
        on_device=s.on_device,
    )
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        **val_row(found, ids=s.val_ids, boxes=s.val_boxes, targets=s.val_targets),
        "lr": s.sched.get_last_lr()[0],
        "seconds": time.perf_counter() - t0,
    }


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    return (
        f"epoch {row['epoch']:3d}/{epochs}  loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  rsna_map {row['val_rsna_map']:.4f} "
        f"(cut {row['val_box_threshold']:.2f}, {row['val_n_images']} images)  "
        f"auc {row['val_auc']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
        + ("  *" if improved else "")
    )


def fit_detector(
    cfg: Config, callback: Callable[[str, dict], None] | None = None, progress: bool = True
) -> dict:
    """Train (or resume) the detector run in `cfg.out` on the cache `cfg.cache`; returns a
    summary (`out`, `epochs`, `best`, `monitor`, `history`). `callback(event, state)` is
    called with "step" after each optimiser step and "epoch" after each epoch."""
    cfg = as_detector(cfg)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise RunError("detect trains in one process: start it without torchrun")
    device, out = resolve_device(cfg.device), Path(cfg.out)
    seed_everything(cfg.seed, cfg.deterministic)
    resuming = last_path(out).exists()  # then the weights come from last.pt, not a download
    s = prepare_detector(cfg, device, weights="none" if resuming else None)
    state = resume_run(s, out) if resuming else RunState()
    if resuming:
        print(f"resuming {out} after epoch {state.start_epoch} of {cfg.epochs}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(config_path(out))
    cache_id = cache_identity(cfg.cache)
    bar = progress_bar(
        total=cfg.epochs * s.steps_per_epoch,
        initial=state.start_epoch * s.steps_per_epoch,
        desc="detect",
        unit="step",
        disable=not progress,
        leave=False,
    )
    for epoch in range(state.start_epoch, cfg.epochs):
        if cfg.patience and state.stale >= cfg.patience:
            bar.write(f"early stop: {MONITOR} has not improved for {state.stale} epochs")
            break
        t0 = time.perf_counter()
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        row = _validate(s, epoch, _train_epoch(s, epoch, bar, callback), t0)
        improved = state.record(row, MONITOR)
        bar.write(_epoch_line(row, cfg.epochs, improved))
        save_epoch(epoch_checkpoint(s, state, row, cache_id), out, improved=improved)
        write_metrics(state.history, out)
        if callback:
            callback("epoch", {"epoch": epoch, "metrics": row})
    bar.close()
    history = pd.DataFrame(state.history)
    summary = {"out": str(out), "epochs": len(history), "best": state.best, "monitor": MONITOR}
    return summary | {"history": history}
