"""Smith's learning-rate range test: a short run with the lr growing step by step, the loss
curve it gives, and the lr where the loss falls fastest (`suggest_lr`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pneumolib import runtime, train
from pneumolib.augment import AugmentPolicy
from pneumolib.config import Config
from pneumolib.data import read_index, read_stats
from pneumolib.loader import make_loader
from pneumolib.models import build_model, trainable_parameters
from pneumolib.progress import bar as progress_bar
from pneumolib.tune.figures import figure_axes


def smooth_curve(loss: Sequence[float], window: int | None = None) -> np.ndarray:
    """Centred moving average (no lag, unlike an exponential average); window ~ n/8."""
    loss = pd.Series(np.asarray(loss, float))
    window = window or max(5, len(loss) // 8)
    return loss.rolling(window, center=True, min_periods=1).mean().to_numpy()


def _endless(loader) -> Iterator[dict]:
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def lr_range_test(
    cfg: Config,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
    diverge: float = 4.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Smith's range test: `steps` optimiser steps of `cfg`'s training (batch, accumulation,
    augmentation) with the lr growing geometrically from `start` to `end`, stopping early once
    the loss diverges (above `diverge` x its lowest running average). Writes nothing.
    Returns DataFrame(lr, loss, smoothed), one row per step."""
    if not 0 < start < end or steps < 3:
        raise ValueError(
            f"lr range test: need 0 < start < end and steps >= 3, got {start}, {end}, {steps}"
        )
    device = runtime.resolve_device(cfg.device)
    train.seed_everything(cfg.seed)
    index, stats = read_index(cfg.cache), read_stats(cfg.cache)
    idx = index[index.split == "train"].reset_index(drop=True)
    micro = cfg.micro_batch_size or cfg.batch_size
    if cfg.batch_size % micro:
        raise ValueError(f"batch size {cfg.batch_size} is not a multiple of micro-batch {micro}")
    cuda = device.type == "cuda"
    policy = AugmentPolicy.from_config(cfg)
    gpu_warp = runtime.warp_on_device(device, gpu_augment=cfg.gpu_augment)
    loader = make_loader(
        cfg.cache,
        idx,
        batch_size=micro,
        out_size=cfg.image_size,
        policy=policy,
        train=True,
        seed=cfg.seed,
        workers=cfg.workers,
        warp_in_worker=not gpu_warp,
        balanced=cfg.balanced_sampling,
        pin_memory=cuda,
    )
    model = build_model(cfg.model, cfg.mode, cfg.weights).to(device)
    channels_last = cfg.channels_last and cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = train.make_optimizer(trainable_parameters(model), cfg.replace(lr=start))
    dtype = runtime.amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    pos = float(idx.target.mean())
    pw = cfg.pos_weight or (1.0 if cfg.balanced_sampling else (1 - pos) / max(pos, 1e-9))
    pw = torch.tensor([pw], device=device)
    batches, rows, avg, lowest = _endless(loader), [], None, math.inf
    for lr in progress_bar(
        np.geomspace(start, end, steps), desc="lr range test", disable=not progress
    ):
        for g in opt.param_groups:
            g["lr"] = float(lr)
        micro_batches = [next(batches) for _ in range(cfg.batch_size // micro)]
        n = sum(len(b["target"]) for b in micro_batches)
        pairs = (
            (
                runtime.to_device_batch(
                    b,
                    device,
                    size=cfg.image_size,
                    policy=policy,
                    stats=stats,
                    train=True,
                    seed=cfg.seed,
                    channels_last=channels_last,
                ),
                b["target"].to(device),
            )
            for b in micro_batches
        )
        opt.zero_grad(set_to_none=True)
        loss = train.accumulate_gradients(model, pairs, n, pw, scaler, dtype) / n
        scaler.step(opt)
        scaler.update()
        rows.append({"lr": float(lr), "loss": loss})
        avg = loss if avg is None else 0.9 * avg + 0.1 * loss  # online, only to stop early
        lowest = min(lowest, avg)
        if not math.isfinite(loss) or avg > diverge * lowest:
            break
    df = pd.DataFrame(rows)
    df["smoothed"] = smooth_curve(df["loss"], max(5, steps // 8))
    return df


def suggest_lr(df: pd.DataFrame) -> float:
    """The lr where the smoothed loss falls fastest against log(lr), looking only at the
    part before its minimum (before divergence) and away from the ends, where the centred
    average sees half a window. Start sweeps and schedules around it."""
    lr, s = df["lr"].to_numpy(float), df["smoothed"].to_numpy(float)
    ok = np.isfinite(s) & np.isfinite(lr) & (lr > 0)
    lr, s = lr[ok], s[ok]
    if len(s) < 5:
        raise ValueError("lr range test: need at least 5 finite points to suggest a learning rate")
    edge = max(1, len(s) // 16)  # half the default smoothing window
    i_min = int(np.argmin(s[: len(s) - edge]))
    if i_min <= edge + 1:  # the loss only rises: even the smallest lr tried is too large
        return float(lr[0])
    slope = np.gradient(s[: i_min + 1], np.log10(lr[: i_min + 1]))
    return float(lr[edge + int(np.argmin(slope[edge:]))])


def plot_lr_range(df: pd.DataFrame, suggestion: float | None = None, ax=None) -> Figure:
    """Loss (raw and smoothed) against the learning rate, log x, with the suggested lr."""
    fig, ax = figure_axes(ax, (6, 3.8))
    ax.plot(df["lr"], df["loss"], color="0.75", lw=1, label="loss per step")
    ax.plot(df["lr"], df["smoothed"], color="C0", lw=2, label="smoothed")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", ls="--", label=f"suggested lr {suggestion:.2g}")
    low, high = np.nanmin(df["smoothed"]), np.nanmax(df["smoothed"][: max(3, len(df) // 2)])
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.5 * (high - low + 1e-9))
    ax.set(
        xscale="log", xlabel="learning rate", ylabel="train loss", title="learning-rate range test"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
