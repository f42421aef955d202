"""pneumolib.train.curves: loss/AUC curves and the best-epoch table, by the trainer's rule."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pneumolib.base.config import demo_config
from pneumolib.train import curves
from pneumolib.train.loop import fit


def _write_run(folder: Path, rows: list[dict], monitor: str = "auc", **cfg) -> Path:
    folder.mkdir(parents=True)
    base = {"epoch": 0, "train_loss": 1.0, "val_loss": 1.0, "val_auc": 0.5, "val_accuracy": 0.5}
    base |= {"val_precision": 0.5, "val_recall": 0.5, "lr": 1e-3, "seconds": 30.0}
    df = pd.DataFrame([base | {"epoch": i + 1} | r for i, r in enumerate(rows)])
    df.to_csv(folder / "metrics.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"monitor": monitor, "mode": "scratch"} | cfg))
    return folder


def test_best_epochs_picks_the_best_epoch_like_the_trainer(tmp_path):
    nan = float("nan")
    a = _write_run(
        tmp_path / "a",
        [
            {"val_auc": 0.7},
            {"val_auc": nan, "val_loss": 0.1},
            {"val_auc": 0.9, "val_loss": 0.8},
            {"val_auc": 0.9, "val_loss": 0.5, "val_recall": 0.8},
            {"val_auc": 0.9, "val_loss": 0.6},
        ],
        weights="/somewhere/runs/scratch/best.pt",
    )
    b = _write_run(
        tmp_path / "b",
        [{"val_loss": 0.5, "val_auc": 0.99}, {"val_loss": 0.3, "val_auc": 0.6}],
        monitor="loss",
        weights="imagenet",
    )
    c = _write_run(tmp_path / "c", [{"val_auc": nan, "val_loss": 0.4}, {"val_auc": nan}])
    d = _write_run(tmp_path / "d", [{"val_auc": nan, "val_loss": nan}])
    table = curves.best_epochs([a, b, c, d])
    assert list(table.index) == ["a", "b", "c", "d"]
    assert table.loc["a", "best_epoch"] == 4  # AUC tie -> the lower val loss
    assert table.loc["a", "val_recall"] == pytest.approx(0.8)
    assert table.loc["a", "weights"] == "scratch/best.pt"
    assert table.loc["a", "minutes"] == pytest.approx(5 * 30 / 60)
    assert table.loc["b", "best_epoch"] == 2  # monitor "loss": lowest val_loss
    assert table.loc["b", "val_auc"] == pytest.approx(0.6)
    assert table.loc["c", "best_epoch"] == 1  # no AUC at all: -val_loss scores, as in the trainer
    assert pd.isna(table.loc["d", "best_epoch"]) and pd.isna(table.loc["d", "val_auc"])
    named = curves.best_epochs({"first": a})
    assert list(named.index) == ["first"]


def test_best_epochs_and_plot_history_name_a_missing_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        curves.best_epochs([tmp_path])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        curves.plot_history({"x": tmp_path})
    with pytest.raises(ValueError, match="at least one run"):
        curves.plot_history({})


def test_plot_history_two_axes_one_curve_set_per_run(tmp_path):
    rows = [{"val_auc": 0.6}, {"val_auc": 0.8}, {"val_auc": 0.8, "val_loss": 0.2}]
    a = _write_run(tmp_path / "a", rows)
    df = pd.read_csv(a / "metrics.csv").assign(val_loss=[0.1, 0.3, 0.9])
    fig = curves.plot_history({"a": a, "b": df})
    assert len(fig.axes) == 2
    ax_loss, ax_auc = fig.axes
    assert len(ax_loss.lines) == 2 * 2  # train + val per run
    assert ax_loss.get_yscale() == "log" and "log" in ax_loss.get_ylabel()  # spikes don't flatten
    assert len(ax_auc.lines) == 2 * 2  # curve + best-epoch star per run
    star_a, star_b = ax_auc.lines[1], ax_auc.lines[3]
    assert list(star_a.get_xdata()) == [3]  # the AUC tie goes to the lower val loss
    assert list(star_b.get_xdata()) == [2] and list(star_b.get_ydata()) == [0.8]
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


@pytest.mark.slow
def test_best_epochs_agrees_with_best_pt_of_a_real_run(demo_cache, tmp_path):
    cfg = demo_config(
        tmp_path,
        cache=str(demo_cache),
        out=str(tmp_path / "run"),
        cache_size=64,
        image_size=48,
        epochs=2,
        batch_size=16,
        max_steps_per_epoch=2,
        monitor="loss",  # finite every epoch even on the tiny val split
    )
    fit(cfg, progress=False)
    table = curves.best_epochs([tmp_path / "run"])
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert table.loc["run", "best_epoch"] == best["epoch"] + 1
    assert table.loc["run", "val_loss"] == pytest.approx(best["metrics"]["val_loss"])
    assert table.loc["run", "epochs"] == 2 and table.loc["run", "mode"] == "scratch"
