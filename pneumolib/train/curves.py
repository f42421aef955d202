"""Training curves (notebook 03): loss and AUC per epoch of one or more runs, and a table of
their best epochs, picked by the trainer's own rule (`train.best_epoch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pneumolib.base.config import Config
from pneumolib.base.rundir import METRICS, config_path, metrics_csv_path, report_config
from pneumolib.train.best_epoch import best_epoch_index


def _history(h: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A metrics table: the DataFrame itself, or RUN/metrics.csv for a run folder."""
    if isinstance(h, pd.DataFrame):
        return h
    path = metrics_csv_path(h) if Path(h).is_dir() else Path(h)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS} (has this run finished an epoch?)")
    return pd.read_csv(path)


def _run_config(h: pd.DataFrame | str | Path) -> Config | None:
    """The config a run folder's best.pt was trained with (`base.rundir.report_config`, which
    names an edited config.json); None for a bare table or a folder without a config."""
    if isinstance(h, pd.DataFrame) or not config_path(h).is_file():
        return None
    return report_config(h).config


def _monitor(h: pd.DataFrame | str | Path) -> str:
    """The run's `monitor`; "auc" for a bare table or an older run."""
    cfg = _run_config(h)
    return cfg.monitor if cfg else "auc"


def plot_history(histories: Mapping[str, pd.DataFrame | str | Path]) -> Figure:
    """Loss (train solid, val dashed; log scale) and validation AUC per epoch, one colour per
    run; each run's best epoch (`best_epoch_index`) is starred. Values: metrics DataFrames or
    run folders. 2 axes."""
    if not histories:
        raise ValueError("histories: expected at least one run")
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_auc = fig.subplots(1, 2)
    for i, (name, h) in enumerate(histories.items()):
        df, color = _history(h), f"C{i}"
        ax_loss.plot(df["epoch"], df["train_loss"], "-o", color=color, ms=3, label=name)
        ax_loss.plot(df["epoch"], df["val_loss"], "--o", color=color, ms=3)
        ax_auc.plot(df["epoch"], df["val_auc"], "-o", color=color, ms=3, label=name)
        best = best_epoch_index(df, _monitor(h))
        if best is not None:
            row = df.iloc[best]
            ax_auc.plot(row["epoch"], row["val_auc"], "*", color=color, ms=13, mec="k")
    # log scale: one bad epoch (a val-loss spike of a confidently wrong model) would otherwise
    # flatten every other point of the curves into the bottom of the axes
    ax_loss.set_yscale("log")
    ax_loss.set(
        xlabel="epoch", ylabel="BCE loss (log scale)", title="loss (train: solid, val: dashed)"
    )
    ax_auc.set(xlabel="epoch", ylabel="ROC AUC", title="validation AUC (star: best epoch)")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return fig


def best_epochs(run_dirs: Sequence[str | Path] | Mapping[str, str | Path]) -> pd.DataFrame:
    """One row per run folder (or {name: folder}): its settings and its best epoch.

    The best epoch is the one the trainer kept as best.pt (`best_epoch_index`, with the run's
    `monitor`). Columns: mode, weights, epochs (trained), best_epoch, val_auc, val_accuracy,
    val_precision, val_recall, val_loss (at the best epoch), minutes (all epochs), s_per_epoch.
    """
    if isinstance(run_dirs, Mapping):
        runs = dict(run_dirs)
    else:
        runs = {Path(r).name: r for r in run_dirs}
    rows = []
    for name, run in runs.items():
        df = _history(Path(run))
        cfg = _run_config(run)
        weights = cfg.weights if cfg else ""
        if weights not in ("", "imagenet", "none"):  # a file: its run folder and name suffice
            weights = "/".join(Path(weights).parts[-2:])
        row = {"run": name, "mode": cfg.mode if cfg else "", "weights": weights, "epochs": len(df)}
        best = best_epoch_index(df, cfg.monitor if cfg else "auc")
        row["best_epoch"] = None if best is None else int(df["epoch"].iloc[best])
        for k in ("val_auc", "val_accuracy", "val_precision", "val_recall", "val_loss"):
            row[k] = float("nan") if best is None else float(df[k].iloc[best])
        seconds = df["seconds"].sum() if "seconds" in df else float("nan")
        row["minutes"] = seconds / 60
        row["s_per_epoch"] = seconds / max(len(df), 1)
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")
