"""One training setup, used by `fit` and by the learning-rate range test: the loaders, the model
(channels-last on CUDA), the optimiser and schedule, mixed precision and its scaler, the positive
class weight; and one optimiser step over accumulated micro-batches.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from pneumolib.base.config import Config
from pneumolib.base.errors import RunError
from pneumolib.core import tasks
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.loader import make_loader
from pneumolib.core.models import build_model, trainable_parameters
from pneumolib.core.runtime import amp_dtype, to_device_batch, warp_on_device
from pneumolib.data.labels import CacheStats, open_cache, with_label


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(mode=True, warn_only=True)
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


OPTIMIZERS = ("adam", "adamw", "sgd")  # what make_optimizer builds (Config.optimizer)
SCHEDULES = ("none", "cosine", "onecycle")  # what make_scheduler builds (Config.schedule)


def make_optimizer(params: list, cfg: Config) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    raise RunError(f"unknown optimizer {cfg.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")


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
    raise RunError(f"unknown schedule {cfg.schedule!r}: use one of {', '.join(SCHEDULES)}")


def accumulate_gradients(
    net: torch.nn.Module,
    pairs,
    *,
    n_step: int,
    loss_weight: torch.Tensor,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None = None,
    distributed: bool = False,
) -> float:
    """Backward over micro-batches `pairs` of (x (b, 1, H, W), y (b,)) -> summed loss.

    The loss is `tasks.loss` with `loss_weight` (the binary positive-class weight (1,), or the
    three-class weights (3,)).

    Each micro-batch's summed loss is divided by the `n_step` samples of the whole step, so the
    accumulated gradient equals that of one big batch's mean loss. Under DDP the gradient
    all-reduce runs once, on the last micro-batch.
    """
    pairs = list(pairs) if distributed else pairs  # DDP must know which micro-batch is last
    total, count = 0.0, len(pairs) if distributed else 0  # count is read under DDP only
    for i, (x, y) in enumerate(pairs):
        ddp = cast(torch.nn.parallel.DistributedDataParallel, net)  # when distributed
        ctx = ddp.no_sync() if distributed and i < count - 1 else contextlib.nullcontext()
        with ctx:
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                loss = tasks.loss(net(x).float(), y, loss_weight, reduction="sum") / n_step
            scaler.scale(loss).backward()
        total += loss.item() * n_step
    return total


# --- the run -----------------------------------------------------------------------------


@dataclass
class TrainSetup:
    """Everything a training step needs, built once by `prepare_training`."""

    cfg: Config
    device: torch.device
    stats: CacheStats
    policy: AugmentPolicy
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    model: torch.nn.Module
    net: torch.nn.Module  # the model as stepped: DDP-wrapped and/or compiled
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    loss_weight: torch.Tensor  # (1,) binary positive-class weight or (3,) class weights
    accum: int  # micro-batches per optimiser step
    steps_per_epoch: int
    channels_last: bool
    distributed: bool


def _rows(cfg: Config) -> tuple[CacheStats, pd.DataFrame, pd.DataFrame]:
    if tasks.task_spec(cfg.task).needs_classes and cfg.label != "pneumonia":
        raise RunError(f"--task {cfg.task} learns RSNA's classes, not --label {cfg.label}")
    index, stats = open_cache(cfg.cache)  # refused when damaged since preprocess
    index = with_label(index, cfg.label)
    train_idx = index[index.split == "train"].reset_index(drop=True)
    val_idx = index[index.split == "val"].reset_index(drop=True)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise RunError(
            f"{cfg.cache}: needs train and val rows (got {len(train_idx)}, {len(val_idx)})"
        )
    return stats, train_idx, val_idx


def _loaders(
    cfg: Config, device: torch.device, *, micro: int, rank: int, world: int, validation: bool
):
    stats, train_idx, val_idx = _rows(cfg)
    where = f"{cfg.cache}/index.csv"
    task = tasks.task_spec(cfg.task)
    train_targets = task.targets(train_idx, where=where)
    policy = AugmentPolicy.from_config(cfg)
    shared: dict[str, Any] = {
        "out_size": cfg.image_size,
        "policy": policy,
        "seed": cfg.seed,
        "workers": cfg.workers,
        "warp_in_worker": not warp_on_device(device, gpu_augment=cfg.gpu_augment),
        "pin_memory": device.type == "cuda",
        # On the CPU, intensity and normalisation become one lookup table per image (made in
        # the workers, applied by cv2.LUT); on a GPU, uint8 crosses and the device normalises.
        "normalise": (stats.mean, stats.std) if device.type == "cpu" else None,
    }
    train_loader = make_loader(
        cfg.cache,
        train_idx,
        batch_size=micro,
        train=True,
        balanced=cfg.balanced_sampling,
        rank=rank,
        world=world,
        targets=train_targets,
        **shared,
    )
    val_loader = (
        make_loader(
            cfg.cache,
            val_idx,
            batch_size=cfg.eval_batch_size,
            train=False,
            targets=task.targets(val_idx, where=where),
            **shared,
        )
        if validation
        else None
    )
    return stats, policy, train_targets, train_loader, val_loader


def prepare_training(
    cfg: Config,
    device: torch.device,
    *,
    rank: int = 0,
    world: int = 1,
    weights: str | None = None,
    validation: bool = True,
) -> TrainSetup:
    """Loaders, model, optimiser, schedule, precision and loss weight for `cfg` on `device`.

    `world` processes share each step (DDP; the model is wrapped when world > 1), each taking
    `cfg.micro_batch_size` (default batch_size / world) samples per micro-batch. `weights`
    overrides `cfg.weights` (a resumed run loads its own). `validation=False` skips the val
    loader (the range test needs none).
    """
    micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
    if cfg.batch_size % (micro * world):
        raise RunError(
            f"batch size {cfg.batch_size} is not a multiple of micro-batch {micro} x "
            f"{world} processes"
        )
    accum = cfg.batch_size // (micro * world)
    stats, policy, train_targets, train_loader, val_loader = _loaders(
        cfg, device, micro=micro, rank=rank, world=world, validation=validation
    )
    steps_per_epoch = math.ceil(len(train_loader) / accum)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    model = build_model(
        cfg.model,
        cfg.mode,
        cfg.weights if weights is None else weights,
        n_outputs=tasks.task_spec(cfg.task).n_outputs,
    )
    model = model.to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(trainable_parameters(model), cfg)
    dtype = amp_dtype(device, cfg.amp)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = cast(torch.nn.Module, torch.compile(net))  # an OptimizedModule; stub says Callable
    return TrainSetup(
        cfg=cfg,
        device=device,
        stats=stats,
        policy=policy,
        train_loader=train_loader,
        val_loader=val_loader,
        model=model,
        net=net,
        opt=opt,
        sched=make_scheduler(opt, cfg, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype,
        loss_weight=torch.tensor(
            tasks.task_spec(cfg.task).class_weights(
                train_targets, pos_weight=cfg.pos_weight, balanced=cfg.balanced_sampling
            ),
            device=device,
        ),
        accum=accum,
        steps_per_epoch=steps_per_epoch,
        channels_last=channels_last,
        distributed=world > 1,
    )


def optimiser_step(s: TrainSetup, micro_batches: list[dict]) -> tuple[float, int]:
    """One optimiser step over `micro_batches` (loader batches) -> (summed loss, samples).

    The scheduler is not stepped here: `fit` steps it, the range test sets the lr itself.
    """
    n_step = sum(len(b["target"]) for b in micro_batches)
    s.opt.zero_grad(set_to_none=True)
    pairs = (
        (
            to_device_batch(
                b,
                s.device,
                size=s.cfg.image_size,
                policy=s.policy,
                stats=s.stats,
                train=True,
                seed=s.cfg.seed,
                channels_last=s.channels_last,
            ),
            b["target"].to(s.device, non_blocking=True),
        )
        for b in micro_batches
    )
    loss = accumulate_gradients(
        s.net,
        pairs,
        n_step=n_step,
        loss_weight=s.loss_weight,
        scaler=s.scaler,
        dtype=s.dtype,
        distributed=s.distributed,
    )
    s.scaler.step(s.opt)
    s.scaler.update()
    return loss, n_step
