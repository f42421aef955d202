"""The one rule for which epoch is a run's best: the trainer keeps that epoch as `best.pt`, the
training curves star it and the sweep reports its metrics, all through these functions.

An epoch scores its val_<monitor> (minus the val loss for "loss"); where that is undefined (AUC
on a val split without both classes) it scores minus its val loss, so every run gets a best.pt.
A higher score wins; a tie on the score (a small val split saturates AUC at 1.0 early) goes to
the lower or equal val loss, so best.pt does not freeze at an early, miscalibrated epoch, and an
exact tie is the same epoch redone after a kill between the two saves. A NaN loss never wins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pandas as pd

# What an epoch can be judged on (Config.monitor): the val_<name> columns the trainer writes
# (`base.metrics.binary_summary`, all higher-is-better) and the val loss.
MONITORS = ("auc", "accuracy", "precision", "recall", "loss")


def monitor_score(row: Mapping[str, float], monitor: str) -> float:
    """val_<monitor> (higher is better), or -val_loss for "loss"; NaN where undefined (what an
    epoch reports to the sweep's pruner, which skips NaN)."""
    return -row["val_loss"] if monitor == "loss" else row[f"val_{monitor}"]


def epoch_score(row: Mapping[str, float], monitor: str) -> float:
    """The epoch's score on `monitor` (higher is better); -val_loss where val_<monitor> is NaN."""
    score = monitor_score(row, monitor)
    return -row["val_loss"] if math.isnan(score) else float(score)


def improves(score: float, loss: float, best: float, best_loss: float) -> bool:
    """True when an epoch scoring `score` with val loss `loss` replaces the best so far."""
    return score > best or (score == best and loss <= best_loss)


def best_epoch_index(
    history: pd.DataFrame | Iterable[Mapping[str, float]], monitor: str = "auc"
) -> int | None:
    """Row (0-based) of the epoch the trainer keeps as best.pt; None when no epoch qualifies
    (an empty history, or every val loss NaN)."""
    rows = history.to_dict("records") if isinstance(history, pd.DataFrame) else history
    best, best_loss, index = -math.inf, math.inf, None
    for i, row in enumerate(rows):
        score, loss = epoch_score(row, monitor), float(row["val_loss"])
        if improves(score, loss, best, best_loss):
            best, best_loss, index = score, loss, i
    return index
