"""The results of a sweep: one row per finished point, the best point as a Config, how flat the
grid is, and whether its best point holds over training seeds."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from pneumolib.base.config import Config
from pneumolib.base.files import atomic_write
from pneumolib.train.best_epoch import best_epoch_index, epoch_score
from pneumolib.tune.claims import FINISHED
from pneumolib.tune.plan import with_aug_strength

METRICS = ("val_auc", "val_accuracy", "val_precision", "val_recall", "val_loss")
TABLE_COLUMNS = ["batch_size", "lr", "epochs", "best_epoch", *METRICS, "seconds"]
TABLE_COLUMNS += ["micro_batch_size", "state", "trial", "run", "run_dir"]


def history_summary(history: pd.DataFrame, monitor: str = "auc") -> dict[str, Any]:
    """Epochs run, the best epoch (the one the trial's best.pt holds), the val metrics there,
    its score and the total seconds."""
    if history.empty:
        return {"epochs": 0, "best_epoch": 0, "seconds": 0.0, "score": float("nan")}
    best = best_epoch_index(history, monitor)
    out: dict[str, Any] = {"epochs": len(history), "seconds": float(history["seconds"].sum())}
    row = None if best is None else history.iloc[best]
    out["best_epoch"] = int(row["epoch"]) if row is not None else 0
    out["score"] = epoch_score(row, monitor) if row is not None else float("nan")
    out.update({m: float(row[m]) if row is not None else float("nan") for m in METRICS})
    return out


def _finished(study: optuna.Study) -> Iterator[optuna.trial.FrozenTrial]:
    """The trial that finished each point (first one, by number)."""
    seen = set()
    for t in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number):
        key = t.user_attrs.get("run")
        if key and key not in seen and "best_epoch" in t.user_attrs:
            seen.add(key)
            yield t


def results_table(study: optuna.Study) -> pd.DataFrame:
    """One row per finished point: batch size, lr (plus base_lr / weight_decay /
    aug_strength when swept), epochs, best epoch, val metrics at the best epoch, seconds,
    micro-batch, state, trial number, run name and folder. Sorted by batch size, lr."""
    rows = []
    for t in _finished(study):
        ua = t.user_attrs
        row = {"batch_size": int(t.params["batch_size"]), "lr": ua["lr"]}
        row.update(
            {k: t.params[k] for k in ("base_lr", "weight_decay", "aug_strength") if k in t.params}
        )
        row.update({k: ua.get(k) for k in TABLE_COLUMNS if k in ua and k not in row})
        row.update(state=t.state.name.lower(), trial=t.number, run=ua["run"])
        rows.append(row)
    extra = [k for k in ("base_lr", "weight_decay", "aug_strength") if any(k in r for r in rows)]
    cols = TABLE_COLUMNS[:2] + extra + TABLE_COLUMNS[2:]
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values(["batch_size", "lr"], ignore_index=True)


def trial_histories(study: optuna.Study) -> dict[str, pd.DataFrame]:
    """Per-epoch history (the run's metrics.csv, kept in the study) of every finished point."""
    return {t.user_attrs["run"]: pd.DataFrame(t.user_attrs["history"]) for t in _finished(study)}


def _best_row(table: pd.DataFrame, metric: str) -> pd.Series:
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the table: {list(table.columns)}")
    ok = table[table[metric].notna()]
    if "state" in ok.columns:
        ok = ok[ok["state"] == "complete"]
    if ok.empty:
        raise ValueError(f"no complete trial with a value for {metric!r}")
    return ok.loc[ok[metric].idxmin() if metric == "val_loss" else ok[metric].idxmax()]


def best_config(
    table: pd.DataFrame, base: Config, metric: str = "val_auc", out: str | Path | None = None
) -> Config:
    """The Config of the best complete point by `metric` (val_loss: lowest). Its `out` is that
    trial's run folder (fit finds it finished; evaluate reads it) unless `out` is given."""
    row = _best_row(table, metric)
    cfg = base.replace(
        batch_size=int(row["batch_size"]),
        lr=float(row["lr"]),
        micro_batch_size=int(row["micro_batch_size"]),
        out=str(out or row["run_dir"]),
    )
    if "weight_decay" in row and pd.notna(row["weight_decay"]):
        cfg = cfg.replace(weight_decay=float(row["weight_decay"]))
    if "aug_strength" in row and pd.notna(row["aug_strength"]):
        cfg = with_aug_strength(cfg, float(row["aug_strength"]))
    return cfg


def write_best(
    table: pd.DataFrame,
    path: str | Path,
    *,
    base: Config,
    metric: str = "val_auc",
    out: str | Path | None = None,
) -> Config:
    """Write `best_config` as JSON (a whole Config, `Config.load` reads it, plus a `tuning`
    record of how it was chosen); returns it. Notebooks 03/04 retrain/evaluate from it."""
    cfg = best_config(table, base, metric, out)
    row = _best_row(table, metric)
    tuning = {"metric": metric, "value": float(row[metric]), "run": row["run"]}
    tuning["trial"] = int(row["trial"])
    path = Path(path)
    atomic_write(path, json.dumps({**cfg.to_dict(), "tuning": tuning}, indent=2))
    return cfg


def lr_axis(table: pd.DataFrame) -> str:
    """The learning-rate column a table is swept along: base_lr under a scaling rule, else lr."""
    return "base_lr" if "base_lr" in table.columns and table["base_lr"].notna().any() else "lr"


def flatness(table: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """How much `metric` moves along each direction of the grid: for every value of one
    parameter, the range (max - min) of the metric along the other; mean and largest. A flat
    direction has a small range."""
    lr_col = lr_axis(table)
    grid = table.pivot_table(index="batch_size", columns=lr_col, values=metric, aggfunc="mean")
    along_bs = (grid.max(axis=0) - grid.min(axis=0)).dropna()  # one per lr
    along_lr = (grid.max(axis=1) - grid.min(axis=1)).dropna()  # one per batch size
    rows = [
        ("batch size (lr fixed)", along_bs.mean(), along_bs.max()),
        ("learning rate (batch size fixed)", along_lr.mean(), along_lr.max()),
    ]
    return pd.DataFrame(rows, columns=["direction", f"mean range of {metric}", "largest range"])


def seed_agreement(tables: Mapping[int, pd.DataFrame], metric: str = "val_auc") -> dict:
    """Does a sweep's best point hold over seeds? `tables`: seed -> results table (one sweep of
    the same grid per training seed).

    Returns `points` (one row per grid point: the metric's mean, std and range over seeds),
    `best` (seed -> run name of that seed's best point), `same_best` (one point wins on every
    seed), `spread` (the mean over points of the seed-to-seed range) and `gap` (the best
    point's mean minus the runner-up's). The differences are within noise when the winner
    changes with the seed or `gap` < `spread`.
    """
    if len(tables) < 2:
        raise ValueError(f"need sweeps over at least 2 seeds, got {len(tables)}")
    rows = pd.concat([t.assign(seed=s) for s, t in tables.items()], ignore_index=True)
    rows = rows[rows[metric].notna()]
    points = rows.groupby("run")[metric].agg(["mean", "std", "min", "max", "count"])
    points = points.assign(range=points["max"] - points["min"]).sort_values("mean", ascending=False)
    best = {s: _best_row(t, metric)["run"] for s, t in tables.items()}
    means = points["mean"].to_numpy()
    gap = float(means[0] - means[1]) if len(means) > 1 else float("nan")
    spread = float(points["range"].mean())
    same = len(set(best.values())) == 1
    return {
        "points": points,
        "best": best,
        "same_best": same,
        "gap": gap,
        "spread": spread,
        "within_noise": (not same) or gap < spread,
    }


def seed_verdict(agree: Mapping[str, Any]) -> str:
    """One sentence on a `seed_agreement` result: does the best point hold, or is it noise?"""
    best = ", ".join(f"seed {s}: {r}" for s, r in agree["best"].items())
    if not agree["within_noise"]:
        return (
            f"The best point holds: {best}, ahead of the runner-up by {agree['gap']:.3f}, more "
            f"than the seed-to-seed range of a point ({agree['spread']:.3f})."
        )
    if agree["same_best"]:
        why = f"the best point is the same on every seed ({best}) but leads by {agree['gap']:.3f}"
    else:
        why = f"the best point changes with the seed ({best})"
    return (
        f"The differences are within noise: {why}, while a point's result moves by "
        f"{agree['spread']:.3f} between seeds on average."
    )
