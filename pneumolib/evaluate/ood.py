"""The learned out-of-distribution check of a run: does an input look like the films the model
was trained on?

The method is the Mahalanobis detector of Lee et al. (NeurIPS 2018) on the network's
penultimate features (the head's input, `core.models.penultimate_features`): the distance of
an image's features to the nearest class mean under one covariance shared by the classes.
The covariance is estimated with Ledoit-Wolf shrinkage, because the features (512 for
resnet18) outnumber or rival the training images on small data, where the plain estimate is
singular. Means and covariance come from at most `MAX_TRAIN` train images; the threshold is
the `QUANTILE` quantile of held-out distances (val, and train out of fold: `fit_ood`), so
about 1% of in-distribution films are flagged by construction. `evaluate` fits it
(`fit_run_ood`) beside the calibration and stores it in RUN/ood.npz with the checkpoint's
SHA-256; `predict` scores every input with it.

`ood_score` is an input's distance over the threshold: above 1 is flagged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf

from pneumolib.base.config import Config
from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import ood_path
from pneumolib.core import tasks
from pneumolib.core.loader import eval_loader
from pneumolib.core.models import penultimate_features
from pneumolib.core.runtime import predict_logits
from pneumolib.data.cache_stats import CacheStats

QUANTILE = 0.99  # the val quantile the threshold is set at
MAX_TRAIN = 4096  # train images the means and covariance are estimated from (a fixed sample)
FOLDS = 5  # train images scored out of fold join val's for the threshold (`fit_ood`)
METHOD = "mahalanobis (class means, shared Ledoit-Wolf covariance; Lee et al. 2018)"


@dataclass(frozen=True)
class OodStats:
    """A fitted check: class means (C, D), the shrunk precision matrix (D, D), the threshold
    on the distance, and where they came from."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    n_train: int
    n_val: int
    checkpoint_sha256: str

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> Mahalanobis distance to the nearest class mean (N,)."""
        x = np.asarray(features, np.float64)
        d2 = np.stack([_squared(x - m, self.precision) for m in self.means], axis=1)  # (N, C)
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> `ood_score` (N,): the distance over the threshold (> 1 flagged)."""
        return self.distance(features) / max(self.threshold, 1e-12)


def _squared(d: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Rows (N, D) -> d P d^T per row (N,)."""
    return np.einsum("nd,de,ne->n", d, precision, d)


def fit_ood(
    train_features: np.ndarray,
    train_classes: np.ndarray,
    val_features: np.ndarray,
    *,
    quantile: float = QUANTILE,
    checkpoint_sha256: str = "",
) -> OodStats:
    """Train features (N, D) with their classes (N,) and val features (M, D) -> `OodStats`.

    The threshold is the `quantile` quantile of held-out distances: the val images' under the
    fit on all of train, and each train image's under a fit on the other `FOLDS` - 1 folds.
    Val alone is often too small for a stable 0.99 quantile (a few dozen images on the demo);
    the train images scored out of fold add N more, and the fit never saw them."""
    x = np.asarray(train_features, np.float64)
    y = np.asarray(train_classes)
    means, precision = _fit(x, y)
    full = OodStats(means, precision, 1.0, quantile, len(x), len(val_features), checkpoint_sha256)
    held_out = [full.distance(val_features)]
    folds = np.arange(len(x)) % FOLDS
    np.random.default_rng(0).shuffle(folds)
    for k in range(FOLDS if len(x) >= 2 * FOLDS else 0):
        fit = _fit(x[folds != k], y[folds != k])
        held_out.append(replace(full, means=fit[0], precision=fit[1]).distance(x[folds == k]))
    threshold = float(np.quantile(np.concatenate(held_out), quantile))
    return replace(full, threshold=threshold)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) and classes (N,) -> (class means (C, D), shrunk precision (D, D))."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    return means, LedoitWolf(assume_centered=True).fit(centred).precision_


def write_ood(run: str | Path, stats: OodStats) -> Path:
    """RUN/ood.npz (atomic); returns its path."""
    buf = io.BytesIO()
    np.savez(
        buf,
        means=stats.means,
        precision=stats.precision,
        threshold=stats.threshold,
        quantile=stats.quantile,
        n_train=stats.n_train,
        n_val=stats.n_val,
        checkpoint_sha256=stats.checkpoint_sha256,
    )
    path = ood_path(run)
    atomic_write(path, buf.getvalue())
    return path


def read_ood(run: str | Path) -> OodStats | None:
    """RUN/ood.npz as `OodStats`, or None where the run has none (or an unreadable one)."""
    path = ood_path(run)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return OodStats(
                means=f["means"],
                precision=f["precision"],
                threshold=float(f["threshold"]),
                quantile=float(f["quantile"]),
                n_train=int(f["n_train"]),
                n_val=int(f["n_val"]),
                checkpoint_sha256=str(f["checkpoint_sha256"]),
            )
    except (OSError, ValueError, KeyError):
        return None


class RunParts(Protocol):
    """What the check needs of a run being evaluated (`evaluate.run._RunContext` has it)."""

    @property
    def run(self) -> Path: ...
    @property
    def cache(self) -> Path: ...
    @property
    def index(self) -> pd.DataFrame: ...
    @property
    def sha256(self) -> str: ...
    @property
    def config(self) -> Config: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def stats(self) -> CacheStats: ...
    @property
    def workers(self) -> int: ...
    @property
    def on_device(self) -> bool: ...
    @property
    def amp(self) -> torch.dtype | None: ...


def split_features(ctx: RunParts, rows: pd.DataFrame) -> np.ndarray:
    """The penultimate features (N, D) of `rows` of the run's cache, in `rows` order."""
    cfg = ctx.config
    loader = eval_loader(ctx.cache, rows, config=cfg, workers=ctx.workers,
                         warp_in_worker=not ctx.on_device, device=ctx.device)  # fmt: skip
    with penultimate_features(ctx.model) as found:
        _, _, positions = predict_logits(
            ctx.model, loader, device=ctx.device, size=cfg.image_size, stats=ctx.stats,
            amp=ctx.amp,
        )  # fmt: skip
    features = torch.cat(found).numpy()
    ordered = np.empty_like(features)
    ordered[positions] = features
    return ordered


def fit_run_ood(ctx: RunParts) -> OodStats:
    """The run's check: RUN/ood.npz when it was fitted on this checkpoint, else fitted on
    (at most `MAX_TRAIN` of) the train split and val, and written."""
    stored = read_ood(ctx.run)
    if stored is not None and stored.checkpoint_sha256 == ctx.sha256:
        return stored
    index = ctx.index
    train = index[index["split"] == "train"]
    if len(train) > MAX_TRAIN:
        train = train.sample(n=MAX_TRAIN, random_state=0)
    train = train.reset_index(drop=True)
    val = index[index["split"] == "val"].reset_index(drop=True)
    classes = tasks.task_spec(ctx.config.task).targets(train, where=f"{ctx.cache}/index.csv")
    stats = fit_ood(
        split_features(ctx, train),
        classes,
        split_features(ctx, val),
        checkpoint_sha256=ctx.sha256,
    )
    print(f"out-of-distribution check: {write_ood(ctx.run, stats)}")
    return stats


def ood_block(ctx: RunParts, split: str) -> dict[str, Any]:
    """The check's report for `split` (metrics_<split>.json's `ood`): the fraction of the
    split flagged, beside the val quantile the threshold was set at."""
    stats = fit_run_ood(ctx)
    rows = ctx.index[ctx.index["split"] == split].reset_index(drop=True)
    flagged = stats.score(split_features(ctx, rows)) > 1.0
    return {
        "method": METHOD,
        "flagged": float(flagged.mean()) if len(flagged) else 0.0,
        "n": len(flagged),
        "quantile": stats.quantile,
        "threshold": stats.threshold,
        "n_train": stats.n_train,
    }


def ood_line(block: dict[str, Any], split: str) -> str:
    """The one line `evaluate` prints about the check."""
    return (
        f"out-of-distribution check: {block['flagged']:.1%} of {split} flagged "
        f"(threshold at the {block['quantile']:g} quantile of held-out val and train distances)"
    )
