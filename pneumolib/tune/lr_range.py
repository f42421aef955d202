"""Smith's learning-rate range test: a short run with the lr growing step by step, the loss
curve it gives, and the lr where the loss falls fastest (`suggest_lr`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pneumolib.base.config import Config
from pneumolib.base.plots import figure_axes
from pneumolib.base.progress import bar as progress_bar
from pneumolib.core.runtime import resolve_device
from pneumolib.train.setup import optimiser_step, prepare_training, seed_everything


def smooth_curve(loss: Sequence[float], window: int | None = None) -> np.ndarray:
    """Centred moving average (no lag, unlike an exponential average); window ~ n/8."""
    series = pd.Series(np.asarray(loss, float))
    window = window or max(5, len(series) // 8)
    return series.rolling(window, center=True, min_periods=1).mean().to_numpy()


def _endless(loader) -> Iterator[dict]:
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def lr_range_test(
    cfg: Config,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
    diverge: float = 4.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Smith's range test: `steps` optimiser steps of `cfg`'s training (the setup `fit` uses:
    batch, accumulation, augmentation, loss weight, precision) with the lr growing geometrically
    from `start` to `end`, stopping early once the loss diverges (above `diverge` x its lowest
    running average). Writes nothing. Returns DataFrame(lr, loss, smoothed), one row per step."""
    if not 0 < start < end or steps < 3:
        raise ValueError(
            f"lr range test: need 0 < start < end and steps >= 3, got {start}, {end}, {steps}"
        )
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    setup = prepare_training(cfg.replace(lr=start), device, validation=False)
    setup.net.train()
    batches, rows, avg, lowest = _endless(setup.train_loader), [], None, math.inf
    for lr in progress_bar(
        np.geomspace(start, end, steps), desc="lr range test", disable=not progress
    ):
        for g in setup.opt.param_groups:
            g["lr"] = float(lr)
        loss, n = optimiser_step(setup, [next(batches) for _ in range(setup.accum)])
        loss /= n
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
