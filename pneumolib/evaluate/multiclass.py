"""Metrics of the three-class task (RSNA's Normal / No Lung Opacity-Not Normal / Lung Opacity):
one-vs-rest AUC per class, the 3 x 3 confusion matrix and macro-F1, with bootstrap 95% CIs.

The bootstrap resamples patients with `metrics.bootstrap_indices(n, n_boot, seed)`, the same
rows the binary metrics of the run use, so every interval of one evaluation comes from one
resampling. The pneumonia metrics of a three-class run are the binary ones on
P(Lung Opacity) (`pneumolib.core.tasks`); this module adds what only three classes have.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pneumolib.base.fmt import with_ci
from pneumolib.base.metrics import (
    bootstrap_distribution,
    bootstrap_indices,
    jsonable,
    percentile_ci,
)
from pneumolib.core.tasks import THREE_CLASSES, class_codes, task_spec

K = len(THREE_CLASSES)


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Codes y (N,), predicted codes (N,) -> counts (3, 3): rows true class, columns predicted."""
    return np.bincount(y * K + pred, minlength=K * K).reshape(K, K)


def _f1_per_class(conf: np.ndarray) -> np.ndarray:
    """Confusion matrices (..., 3, 3) -> F1 per class (..., 3); NaN where a class is neither
    present nor predicted (0/0)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    fp, fn = conf.sum(-2) - tp, conf.sum(-1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * tp / (2 * tp + fp + fn)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the classes that are present or predicted (scikit-learn's macro average
    over the labels that occur)."""
    return float(np.nanmean(_f1_per_class(confusion(y, pred))))


def _bootstrap_macro_f1(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Macro-F1 on each resample of `bootstrap_indices(n, n_boot, seed)` -> (n_boot,)."""
    idx = bootstrap_indices(len(y), n_boot, seed)
    cell = (y * K + pred)[idx]  # (R, N): which confusion cell each drawn patient falls in
    key = cell + (K * K) * np.arange(n_boot)[:, None]
    conf = np.bincount(key.ravel(), minlength=n_boot * K * K).reshape(n_boot, K, K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a resample: NaN
        return np.nanmean(_f1_per_class(conf), axis=1)


def _auc_ovr(positive: np.ndarray, score: np.ndarray) -> float:
    """One class against the other two; NaN when the class is absent or is every patient."""
    if positive.min() == positive.max():
        return float("nan")
    return float(roc_auc_score(positive, score))


def three_class_metrics(
    y: np.ndarray, probs: np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Class codes y (N,) and probabilities (N, 3) in `THREE_CLASSES` order -> JSON-ready dict:
    `classes`, `n_per_class`, `auc_ovr` {class: AUC of that class against the other two} with
    `auc_ovr_ci`, `confusion` (3 x 3, rows true, columns the most probable class), `macro_f1`
    with `macro_f1_ci`, `accuracy` (of the most probable class). `n_boot=0`: no intervals."""
    y, probs = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != K or len(probs) != len(y):
        raise ValueError(f"probs: expected ({len(y)}, {K}), got {probs.shape}")
    pred = probs.argmax(1)
    counts = np.bincount(y, minlength=K).tolist()
    out: dict[str, Any] = {
        "classes": list(THREE_CLASSES),
        "n_per_class": dict(zip(THREE_CLASSES, counts, strict=True)),
        "auc_ovr": {},
        "auc_ovr_ci": {},
    }
    for k, name in enumerate(THREE_CLASSES):
        positive = (y == k).astype(int)
        out["auc_ovr"][name] = _auc_ovr(positive, probs[:, k])
        dist = (
            bootstrap_distribution(positive, probs[:, k], n_boot=n_boot, seed=seed)["roc_auc"]
            if n_boot
            else np.full(1, np.nan)
        )
        out["auc_ovr_ci"][name] = [float(v) for v in percentile_ci(dist, alpha)]
    out["confusion"] = confusion(y, pred).tolist()
    out["macro_f1"] = macro_f1(y, pred)
    boot = _bootstrap_macro_f1(y, pred, n_boot, seed) if n_boot else np.full(1, np.nan)
    out["macro_f1_ci"] = [float(v) for v in percentile_ci(boot, alpha)]
    out["accuracy"] = float((pred == y).mean())
    return jsonable(out)


def summarize_classes(
    pred: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any] | None:
    """`three_class_metrics` of a predictions table with a `class` column and the per-class
    probability columns `prob_normal, prob_not_normal, prob_lung_opacity`; None for a binary
    run's table (no such columns)."""
    cols = list(task_spec("three-class").prob_columns)
    if not set(cols) <= set(pred.columns):
        return None
    y = class_codes(pred["class"], where="predictions (column class)")
    return three_class_metrics(y, pred[cols].to_numpy(), n_boot=n_boot, seed=seed, alpha=alpha)


def class_table(three_class: dict[str, Any]) -> pd.DataFrame:
    """A `three_class_metrics` dict -> one row per class: n and one-vs-rest AUC [95% CI], plus
    a last row with macro-F1 and accuracy."""
    rows = {}
    for name in three_class["classes"]:
        auc, (lo, hi) = three_class["auc_ovr"][name], three_class["auc_ovr_ci"][name]
        rows[name] = {
            "n": three_class["n_per_class"][name],
            "AUC (one vs rest)": with_ci(auc, [lo, hi]),
        }
    lo, hi = three_class["macro_f1_ci"]
    rows["all classes"] = {
        "n": sum(three_class["n_per_class"].values()),
        "macro-F1": with_ci(three_class["macro_f1"], [lo, hi]),
        "accuracy": with_ci(three_class["accuracy"]),
    }
    return pd.DataFrame.from_dict(rows, orient="index").fillna("")


def confusion_table(three_class: dict[str, Any]) -> pd.DataFrame:
    """The 3 x 3 confusion matrix with class names: rows true, columns predicted."""
    names = three_class["classes"]
    df = pd.DataFrame(three_class["confusion"], index=names, columns=names)
    df.index.name, df.columns.name = "true", "predicted"
    return df
