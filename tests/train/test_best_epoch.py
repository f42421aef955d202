"""pneumolib.train.best_epoch: one rule for the best epoch, which the trainer (best.pt), the
curves' table and the sweep's results all follow, ties and undefined AUCs included."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pneumolib.base.config import Config
from pneumolib.train import curves
from pneumolib.train import loop as train_loop
from pneumolib.train.best_epoch import best_epoch_index
from pneumolib.train.loop import RunState
from pneumolib.tune.results import history_summary

NAN = float("nan")


def _trainer_best(history: pd.DataFrame, monitor: str) -> int | None:
    """Which epoch RunState.record (the trainer's bookkeeping) last called an improvement."""
    state, best = RunState(), None
    for i, row in enumerate(history.to_dict("records")):
        if state.record(row, monitor):
            best = i
    return best


def test_ties_go_to_the_lower_val_loss_and_a_full_tie_to_the_later_epoch():
    df = pd.DataFrame(
        {"val_auc": [0.7, NAN, 0.9, 0.9, 0.9, 0.8], "val_loss": [0.5, 0.1, 0.6, 0.4, 0.4, 0.2]}
    )
    assert best_epoch_index(df) == 4  # AUC tie -> lower loss (3); full tie -> the redone epoch (4)
    assert best_epoch_index(df, "loss") == 1  # lowest val loss, whatever its AUC
    assert best_epoch_index(df.assign(val_auc=NAN)) == 1  # no AUC at all: -val_loss scores
    assert best_epoch_index(df.assign(val_loss=NAN, val_auc=NAN)) is None
    assert best_epoch_index(df.iloc[:0]) is None


@pytest.mark.parametrize("monitor", ["auc", "loss", "precision"])
def test_trainer_curves_and_sweep_agree_on_random_histories_with_ties(monitor, tmp_path):
    rng = np.random.default_rng(0)
    for k in range(60):
        n = int(rng.integers(1, 9))
        auc = rng.choice([0.5, 0.75, 1.0, NAN], size=n)  # few values: ties are the rule
        df = pd.DataFrame(
            {
                "epoch": np.arange(1, n + 1),
                "val_auc": auc,
                "val_precision": rng.choice([0.0, 0.5, NAN], size=n),
                "val_accuracy": 0.5,
                "val_recall": 0.5,
                "val_loss": rng.choice([0.2, 0.4, 0.6], size=n),
                "seconds": 1.0,
            }
        )
        expected = _trainer_best(df, monitor)
        assert best_epoch_index(df, monitor) == expected, (k, df)
        assert history_summary(df, monitor)["best_epoch"] == df["epoch"].iloc[expected]
        run = tmp_path / f"r{monitor}{k}"
        run.mkdir()
        df.to_csv(run / "metrics.csv", index=False)
        (run / "config.json").write_text(f'{{"monitor": "{monitor}"}}')
        assert curves.best_epochs([run]).loc[run.name, "best_epoch"] == expected + 1


@pytest.mark.slow  # trains (a 4-epoch sweep point): ~20 s, half the fast tier's budget
def test_the_sweep_names_the_epoch_best_pt_holds_when_aucs_tie(demo_cache, tmp_path, monkeypatch):
    """Every epoch's val AUC ties (0.5), so only the loss tie-break picks best.pt; the sweep's
    table, the curves' table and best.pt must name the same epoch."""
    from pneumolib import tune

    real = train_loop.binary_summary

    def tied(y, p, threshold=0.5):
        return {**real(y, p, threshold), "auc": 0.5}

    monkeypatch.setattr(train_loop, "binary_summary", tied)
    cfg = Config(
        cache=str(demo_cache),
        out=str(tmp_path / "sweep"),
        model="resnet18",
        mode="feature-extraction",
        weights="none",
        image_size=32,
        cache_size=64,
        epochs=4,
        max_steps_per_epoch=1,
        workers=0,
        device="cpu",
        eval_batch_size=64,
        schedule="none",
    )
    table = tune.sweep(cfg, batch_sizes=[4], lrs=[3e-2], max_micro_batch=4, progress=False)
    run = table.run_dir.iloc[0]
    history = pd.read_csv(f"{run}/metrics.csv")
    assert (history.val_auc == 0.5).all() and len(history) == 4
    best = torch.load(f"{run}/best.pt", weights_only=True)
    assert table.best_epoch.iloc[0] == best["epoch"] + 1
    assert curves.best_epochs([run]).best_epoch.iloc[0] == best["epoch"] + 1
    assert math.isclose(table.val_loss.iloc[0], history.val_loss.min())
