"""The trainer: `fit(cfg)` trains (or resumes) a run folder; also runs under `torchrun` (DDP).

Per epoch: a progress bar over optimiser steps (each step may accumulate several micro-batches
so that an effective batch of 1,024 fits a small GPU), validation (loss, AUC, accuracy,
precision, recall), one summary line, a row in metrics.csv, and `last.pt` / `best.pt` written
atomically with everything needed to continue: model, optimiser, scheduler, scaler, epoch,
RNG states and the whole config. Re-running the same call continues from `last.pt`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pneumolib.augment import (
    AugmentPolicy,
)
from pneumolib.checkpoint import (
    RunError,
    cache_identity,
    check_same_cache,
    load_checkpoint,
    resume_best,
    rng_state,
    save_epoch,
    set_rng_state,
    write_metrics,
)
from pneumolib.config import Config
from pneumolib.data import read_index, read_stats, with_label
from pneumolib.loader import make_loader
from pneumolib.models import build_model, trainable_parameters
from pneumolib.progress import bar as progress_bar
from pneumolib.runtime import (
    amp_dtype,
    predict_probs,
    resolve_device,
    to_device_batch,
    warp_on_device,
)

# Fields that may differ when a run is resumed (they change speed or paths, not the result;
# `epochs` is not one: the learning-rate schedule is laid out over the whole run).
RESUMABLE_CHANGES = {
    "device",
    "workers",
    "compile",
    "patience",
    "eval_batch_size",
    "out",
    "cache",
    "raw",
}


# --- small pieces ------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimiser step `s` for 'none' or 'cosine' (+ warm-up)."""

    def f(s: int) -> float:
        if warmup_steps and s < warmup_steps:
            return (s + 1) / warmup_steps
        if schedule == "none":
            return 1.0
        t = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def make_optimizer(params: list, cfg: Config) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    raise RunError(f"unknown optimizer {cfg.optimizer!r}: use adam, adamw or sgd")


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=max(total, 1),
            pct_start=0.3 if not warm else warm / total,
        )
    if cfg.schedule in ("none", "cosine"):
        return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.schedule, total, warm))
    raise RunError(f"unknown schedule {cfg.schedule!r}: use none, cosine or onecycle")


def binary_summary(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, precision, recall at `threshold`; labels y (N,), probabilities p (N,)."""
    pred = p >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    auc = roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")
    return {
        "auc": float(auc),
        "accuracy": float((pred == (y == 1)).mean()),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def accumulate_gradients(
    net: torch.nn.Module,
    pairs,
    n_step: int,
    pos_weight: torch.Tensor,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None = None,
    distributed: bool = False,
) -> float:
    """Backward over micro-batches `pairs` of (x (b, 1, H, W), y (b,)) -> summed loss.

    Each micro-batch's summed loss is divided by the `n_step` samples of the whole step, so the
    accumulated gradient equals that of one big batch's mean loss. Under DDP the gradient
    all-reduce runs once, on the last micro-batch.
    """
    pairs = list(pairs) if distributed else pairs  # DDP must know which micro-batch is last
    total, count = 0.0, len(pairs) if distributed else None
    for i, (x, y) in enumerate(pairs):
        ctx = net.no_sync() if distributed and i < count - 1 else contextlib.nullcontext()
        with ctx:
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                logits = net(x).float().squeeze(1)
                loss = (
                    F.binary_cross_entropy_with_logits(
                        logits, y, pos_weight=pos_weight, reduction="sum"
                    )
                    / n_step
                )
            scaler.scale(loss).backward()
        total += loss.item() * n_step
    return total


# --- the run -----------------------------------------------------------------------------


def _score(row: dict, monitor: str) -> float:
    """The epoch's score on `monitor` (higher is better). Where it is undefined (AUC on a val
    split without both classes) it is minus the val loss, so every run still gets a best.pt."""
    score = row[f"val_{monitor}"] if monitor != "loss" else -row["val_loss"]
    return -row["val_loss"] if math.isnan(score) else score


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


def fit(
    cfg: Config, callback: Callable[[str, dict], None] | None = None, progress: bool = True
) -> dict:
    """Train (or resume) the run in `cfg.out` on the cache `cfg.cache`; returns a summary.

    `callback(event, state)` is called with "step" after each optimiser step and "epoch" after
    each epoch (tests use it to interrupt a run). Under torchrun (RANK/WORLD_SIZE set) the model
    is wrapped in DistributedDataParallel and only rank 0 writes the run folder.
    """
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    device = resolve_device(cfg.device)
    rank, world = 0, 1
    if distributed:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    main = rank == 0
    out = Path(cfg.out)
    seed_everything(cfg.seed, cfg.deterministic)

    index, stats = with_label(read_index(cfg.cache), cfg.label), read_stats(cfg.cache)
    train_idx = index[index.split == "train"].reset_index(drop=True)
    val_idx = index[index.split == "val"].reset_index(drop=True)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise RunError(
            f"{cfg.cache}: needs train and val rows (got {len(train_idx)}, {len(val_idx)})"
        )
    micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
    if cfg.batch_size % (micro * world):
        raise RunError(
            f"batch size {cfg.batch_size} is not a multiple of micro-batch {micro} x "
            f"{world} processes"
        )
    accum = cfg.batch_size // (micro * world)
    policy = AugmentPolicy.from_config(cfg)
    gpu_warp = warp_on_device(device, gpu_augment=cfg.gpu_augment)
    # On the CPU, intensity and normalisation become one lookup table per image (made in the
    # workers, applied by cv2.LUT); on a GPU, uint8 crosses and `to_model_input` runs there.
    normalise = (stats["mean"], stats["std"]) if device.type == "cpu" else None
    train_loader = make_loader(
        cfg.cache,
        train_idx,
        batch_size=micro,
        out_size=cfg.image_size,
        policy=policy,
        train=True,
        seed=cfg.seed,
        workers=cfg.workers,
        warp_in_worker=not gpu_warp,
        balanced=cfg.balanced_sampling,
        pin_memory=device.type == "cuda",
        rank=rank,
        world=world,
        normalise=normalise,
    )
    val_loader = make_loader(
        cfg.cache,
        val_idx,
        batch_size=cfg.eval_batch_size,
        out_size=cfg.image_size,
        policy=policy,
        train=False,
        seed=cfg.seed,
        workers=cfg.workers,
        warp_in_worker=not gpu_warp,
        pin_memory=device.type == "cuda",
        normalise=normalise,
    )
    steps_per_epoch = math.ceil(len(train_loader) / accum)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)

    resuming = (out / "last.pt").exists()  # then the weights come from last.pt, not a download
    model = build_model(cfg.model, cfg.mode, "none" if resuming else cfg.weights).to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(trainable_parameters(model), cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    pos = float(train_idx.target.mean())
    pos_weight = cfg.pos_weight or (1.0 if cfg.balanced_sampling else (1 - pos) / max(pos, 1e-9))
    pw = torch.tensor([pos_weight], device=device)

    start_epoch, best, best_loss, stale, history = 0, -math.inf, math.inf, 0, []
    cache_id = cache_identity(cfg.cache)
    if resuming:
        ckpt = load_checkpoint(out / "last.pt", map_location=device)
        _check_resume(ckpt["config"], cfg, out)
        check_same_cache(ckpt, cfg.cache, out)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best"], list(ckpt["history"])
        best_loss, stale = ckpt.get("best_loss", math.inf), ckpt.get("stale", 0)
        best, best_loss = resume_best(out, best, best_loss)
        if main:
            print(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")

    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
    writer = _tensorboard(out) if main else None
    # One bar for the whole run (not one per epoch): its ETA is the run's, and its redraws stay
    # bounded however many epochs there are (see pneumolib.progress).
    bar = progress_bar(
        total=cfg.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        desc="train",
        unit="step",
        disable=not (progress and main),
        leave=False,
    )
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience and stale >= cfg.patience:
            if main:
                bar.write(f"early stop: {cfg.monitor} has not improved for {stale} epochs")
            break
        t0 = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        net.train()
        batches = iter(train_loader)
        run_loss, seen = 0.0, 0
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        for step in range(steps_per_epoch):
            micro_batches = [b for _, b in zip(range(accum), batches, strict=False)]
            if not micro_batches:
                break
            n_step = sum(len(b["target"]) for b in micro_batches)
            opt.zero_grad(set_to_none=True)
            pairs = (
                (
                    to_device_batch(
                        b,
                        device,
                        size=cfg.image_size,
                        policy=policy,
                        stats=stats,
                        train=True,
                        seed=cfg.seed,
                        channels_last=channels_last,
                    ),
                    b["target"].to(device, non_blocking=True),
                )
                for b in micro_batches
            )
            run_loss += accumulate_gradients(net, pairs, n_step, pw, scaler, dtype, distributed)
            seen += n_step
            scaler.step(opt)
            scaler.update()
            sched.step()
            bar.update()
            bar.set_postfix(
                loss=f"{run_loss / seen:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False
            )
            if callback:
                callback("step", {"epoch": epoch, "step": step})
        if distributed:  # BN running stats drift per rank after the last forward: take rank 0's
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        p, y, _ = predict_probs(
            model,
            val_loader,
            device,
            size=cfg.image_size,
            stats=stats,
            amp=dtype,
            channels_last=channels_last,
        )
        val_loss = float(
            F.binary_cross_entropy(
                torch.from_numpy(p).double().clamp(1e-7, 1 - 1e-7), torch.from_numpy(y).double()
            )
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": run_loss / max(seen, 1),
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in binary_summary(y, p).items()},
            "lr": sched.get_last_lr()[0],
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        score = _score(row, cfg.monitor)
        # A tie on the monitored metric (a small val split saturates AUC at 1.0 early) goes
        # to the lower val loss, so best.pt does not freeze at an early, miscalibrated epoch;
        # an exact tie is the same epoch redone after a kill between the two saves.
        improved = score > best or (score == best and val_loss <= best_loss)
        if improved:
            best, best_loss = score, val_loss
        stale = 0 if improved else stale + 1
        if main:
            bar.write(
                f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                f"val_loss {val_loss:.4f}  auc {row['val_auc']:.4f}  "
                f"acc {row['val_accuracy']:.3f}  "
                f"lr {row['lr']:.2e}  {row['seconds']:.1f}s" + ("  *" if improved else "")
            )
            ckpt = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "config": cfg.to_dict(),
                "stats": stats_for_ckpt(stats),
                "metrics": row,
                "best": best,
                "best_loss": best_loss,
                "stale": stale,
                "history": history,
                "rng": rng_state(),
                "cache": cache_id,
            }
            save_epoch(ckpt, out, improved=improved)
            write_metrics(history, out)
            if writer:
                for k, v in row.items():
                    writer.add_scalar(k, v, epoch + 1)
        if callback:
            callback("epoch", {"epoch": epoch, "metrics": row})
    bar.close()
    summary = {
        "out": str(out),
        "epochs": len(history),
        "best": best,
        "monitor": cfg.monitor,
        "history": pd.DataFrame(history),
    }
    if distributed:
        summary["rank_checksums"] = _rank_checksums(model, world)
        if main:
            (out / "ddp_check.json").write_text(json.dumps(summary["rank_checksums"]))
        dist.barrier()
    if writer:
        writer.close()
    return summary


def stats_for_ckpt(stats: dict) -> dict:
    """What prediction needs to preprocess a new image exactly like the cache did."""
    return {"mean": stats["mean"], "std": stats["std"], "size": stats["size"]}


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
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))
