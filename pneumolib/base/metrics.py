"""Metrics, bootstrap confidence intervals, thresholds, calibration and subgroup tables.

Works on plain arrays and on prediction tables with columns `patientId, prob, target, view, sex,
age`. Thresholds are chosen on validation and applied unchanged to test. Bootstrap intervals are
vectorised over resamples: each resample is reduced to counts of positives and negatives per
distinct score, from which AUC, AP, Brier and every confusion-matrix metric follow by array
arithmetic (no Python loop over resamples). Undefined ratios (e.g. precision with no predicted
positives, AUC with one class) are NaN here and `null` in JSON, where scikit-learn would return 0.
`pneumolib.evaluate.run` applies them to a run and draws the figures.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pneumolib.base.errors import UsageError

THRESHOLD_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "f1",
    "balanced_accuracy",
)
RANKING_METRICS = ("roc_auc", "average_precision", "brier")
CI_METRICS = RANKING_METRICS + THRESHOLD_METRICS
COUNTS = ("tn", "fp", "fn", "tp")
AGE_BANDS = ("<20", "20-39", "40-59", "60+")
UNKNOWN = "unknown"
CLASS_NAMES = ("no pneumonia", "pneumonia")


# --------------------------------------------------------------------------- point metrics
def check_arrays(y: Any, p: Any, y_name: str = "y", p_name: str = "p") -> tuple[np.ndarray, ...]:
    """Validate labels (n,) in {0, 1} and probabilities (n,) in [0, 1]; return int8/float64."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(
            f"{y_name} and {p_name} must be 1-D of equal length, got {y.shape}, {p.shape}"
        )
    if len(y) == 0:
        raise ValueError(f"{y_name} is empty: nothing to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{y_name} must hold only 0 and 1, got {np.unique(y)[:5]}")
    if not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise ValueError(f"{p_name} must hold finite probabilities in [0, 1]")
    return y.astype(np.int8), p


def _rates(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, np.ndarray]:
    """Confusion-matrix ratios from counts of any (matching) shape; NaN where undefined."""
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / (tp + fn)
        specificity = tn / (tn + fp)
        return {
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "precision": tp / (tp + fp),
            "recall": recall,
            "sensitivity": recall,
            "specificity": specificity,
            "f1": 2 * tp / (2 * tp + fp + fn),
            "balanced_accuracy": (recall + specificity) / 2,
        }


def brier(y: Any, p: Any) -> float:
    """Brier score: mean squared difference between probability and 0/1 label."""
    y, p = check_arrays(y, p)
    return float(np.mean((p - y) ** 2))


def _point_metrics(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> list[dict]:
    """Point metrics at each threshold; ranking metrics computed once (checked arrays in)."""
    n_pos = int(y.sum())
    both = 0 < n_pos < len(y)
    ranking = {
        "n": len(y),
        "n_pos": n_pos,
        "prevalence": n_pos / len(y),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else math.nan,
        "average_precision": float(skm.average_precision_score(y, p)) if n_pos else math.nan,
        "brier": float(np.mean((p - y) ** 2)),
    }
    rows = []
    for t in thresholds:
        hit = p >= t  # positive call; the same rule as sklearn's curves
        tp, fp = int((hit & (y == 1)).sum()), int((hit & (y == 0)).sum())
        fn, tn = n_pos - tp, len(y) - n_pos - fp
        row = {"threshold": float(t)} | ranking
        row |= {k: float(v) for k, v in _rates(tp, fp, fn, tn).items()}
        rows.append(row | {"tn": tn, "fp": fp, "fn": fn, "tp": tp})
    return rows


def binary_metrics(y: Any, p: Any, threshold: float = 0.5) -> dict[str, float]:
    """Point metrics for labels y (n,) and probabilities p (n,); positive means p >= threshold."""
    y, p = check_arrays(y, p)
    return _point_metrics(y, p, [threshold])[0]


def binary_summary(y: Any, p: Any, threshold: float = 0.5) -> dict[str, float]:
    """The trainer's per-epoch val row: AUC (NaN with one class), accuracy, and precision and
    recall at `threshold` as 0.0 where no call (or no positive) makes them undefined."""
    m = binary_metrics(y, p, threshold)
    zero = {k: 0.0 if math.isnan(m[k]) else m[k] for k in ("precision", "recall")}
    return {"auc": m["roc_auc"], "accuracy": m["accuracy"], **zero}


def reliability(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability table over `n_bins` bins of [0, 1], as sklearn's calibration_curve: equal
    width ("uniform"), or equal count ("quantile": edges at quantiles of p; tied quantiles merge,
    so fewer bins can come back). Columns bin, lo, hi, count, mean_pred, observed (NaN for
    empty bins)."""
    y, p = check_arrays(y, p)
    if strategy == "quantile":
        edges = np.unique(np.r_[0.0, np.quantile(p, np.linspace(0, 1, n_bins + 1))[1:-1], 1.0])
        n_bins = len(edges) - 1
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy: expected 'uniform' or 'quantile', got {strategy!r}")
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = np.bincount(ids, weights=p, minlength=n_bins) / count
        observed = np.bincount(ids, weights=y, minlength=n_bins) / count
    return pd.DataFrame(
        {"bin": np.arange(n_bins), "lo": edges[:-1], "hi": edges[1:], "count": count}
        | {"mean_pred": mean_pred, "observed": observed}
    )


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE from a `reliability` table: count-weighted mean |observed - mean predicted|."""
    used = table[table["count"] > 0]
    gap = (used["observed"] - used["mean_pred"]).abs()
    return float((gap * used["count"]).sum() / used["count"].sum())


# --------------------------------------------------------------------------- thresholds
def choose_thresholds(y_val: Any, p_val: Any, target_sensitivity: float = 0.9) -> dict[str, float]:
    """Operating points chosen on validation: "0.5", "youden" (max sens + spec - 1), "best_f1"
    and f"sens@{target:.2f}" (the highest threshold whose sensitivity reaches the target).
    Apply them unchanged to test; never call this on test predictions."""
    y, p = check_arrays(y_val, p_val, "y_val", "p_val")
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    if y.min() == y.max():
        raise UsageError("y_val holds one class only: thresholds need positives and negatives")
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # the first point is "predict nothing" (t = inf)
    # Thresholds fall along roc_curve; argmax keeps the highest among ties.
    youden = thr[np.argmax(tpr - fpr)]
    sens = thr[np.argmax(tpr >= target_sensitivity - 1e-12)]
    prec, rec, thr_pr = skm.precision_recall_curve(y, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.nan_to_num(2 * prec * rec / (prec + rec))[:-1]  # last point has no threshold
    best_f1 = thr_pr[len(f1) - 1 - np.argmax(f1[::-1])]  # thr_pr rises: take the highest tie
    return {
        "0.5": 0.5,
        "youden": float(youden),
        "best_f1": float(best_f1),
        f"sens@{target_sensitivity:.2f}": float(sens),
    }


def as_thresholds(thresholds: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(thresholds, Mapping):
        if not thresholds:
            raise ValueError("thresholds is empty: pass e.g. {'0.5': 0.5}")
        return {str(k): float(v) for k, v in thresholds.items()}
    return {f"{float(thresholds):g}": float(thresholds)}


# --------------------------------------------------------------------------- bootstrap
def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Resample indices (n_boot, n): row r is resample r; the same seed gives the same rows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int64 if n >= 2**31 else np.int32)


def _from_level_counts(
    pos: np.ndarray, neg: np.ndarray, first_above: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics from integer counts of positives/negatives per distinct score, pos/neg (R, G)
    with scores ascending; `first_above` (T,) is the first level >= each threshold.
    Ranking metrics come back as (R,), threshold metrics and counts as (R, T)."""
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    cpos, cneg = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)  # cases at or below each level
    with np.errstate(divide="ignore", invalid="ignore"):
        # AUC = P(score_pos > score_neg) + P(tie) / 2: exactly sklearn's trapezoid rule.
        auc = ((pos * cneg).sum(1) - 0.5 * (pos * neg).sum(1)) / (n_pos * n_neg)
        # AP = sum over levels of (recall step) * (precision when calling that level and above
        # positive), as sklearn's average_precision_score.
        tp_at = n_pos[:, None] - cpos + pos
        called = tp_at + n_neg[:, None] - cneg + neg
        ap = np.where(pos > 0, pos * tp_at / called, 0.0).sum(1) / n_pos
    # Cases below threshold t are those at levels < first_above[t] (none when it is 0).
    k = np.maximum(first_above - 1, 0)
    has_below = first_above > 0
    tp = n_pos[:, None] - cpos[:, k] * has_below
    fp = n_neg[:, None] - cneg[:, k] * has_below
    fn, tn = n_pos[:, None] - tp, n_neg[:, None] - fp
    out = {"roc_auc": auc, "average_precision": ap}
    return out | _rates(tp, fp, fn, tn) | {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def bootstrap_distribution(
    y: Any,
    p: Any,
    *,
    thresholds: float | Sequence[float] = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 250_000,
) -> dict[str, np.ndarray]:
    """Every metric on every resample of `bootstrap_indices(n, n_boot, seed)`: ranking metrics
    as (n_boot,), threshold metrics and counts as (n_boot, T). `chunk` bounds memory (elements)."""
    y, p = check_arrays(y, p)
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    levels, group = np.unique(p, return_inverse=True)  # distinct scores, ascending
    n_lev = len(levels)
    first_above = np.searchsorted(levels, thr, side="left")  # (T,)
    sq_err = (p - y) ** 2
    label = y.astype(np.int64)
    idx = bootstrap_indices(len(y), n_boot, seed)
    step = max(1, chunk // len(y))
    parts = []
    for start in range(0, n_boot, step):
        block = idx[start : start + step]  # (r, n)
        r = len(block)
        # One bincount per block counts how often each (label, resample, score level) was
        # drawn: key = label * r * G + resample * G + level.
        key = group[block] + (n_lev * np.arange(r))[:, None] + (r * n_lev) * label[block]
        counts = np.bincount(key.ravel(), minlength=2 * r * n_lev).reshape(2, r, n_lev)
        part = _from_level_counts(counts[1], counts[0], first_above)
        part["brier"] = sq_err[block].mean(1)
        parts.append(part)
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def percentile_ci(values: np.ndarray, alpha: float) -> np.ndarray:
    """Percentile interval over axis 0, ignoring undefined (NaN) resamples: (2,) or (2, T)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, on purpose
        return np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)


def bootstrap_ci(
    y: Any,
    p: Any,
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) intervals for every metric in CI_METRICS."""
    dist = bootstrap_distribution(y, p, thresholds=[threshold], n_boot=n_boot, seed=seed)
    out = {}
    for name in CI_METRICS:
        lo, hi = percentile_ci(dist[name].reshape(n_boot, -1)[:, 0], alpha)
        out[name] = (float(lo), float(hi))
    return out


# --------------------------------------------------------------------------- tables
def _metric_rows(
    y: Any, p: Any, thresholds: dict[str, float], n_boot: int, seed: int, alpha: float
) -> list[dict[str, Any]]:
    """One row per threshold: point metrics, counts and `<metric>_lo/_hi` bootstrap bounds."""
    y, p = check_arrays(y, p)
    names, values = list(thresholds), list(thresholds.values())
    dist = (
        bootstrap_distribution(y, p, thresholds=values, n_boot=n_boot, seed=seed)
        if n_boot > 0
        else {}
    )
    rows = []
    for j, (name, row) in enumerate(zip(names, _point_metrics(y, p, values), strict=True)):
        row = {"threshold_name": name} | row
        for m in CI_METRICS:
            d = dist[m] if m in dist else np.full(1, np.nan)
            lo, hi = percentile_ci(d if d.ndim == 1 else d[:, j], alpha)
            row[f"{m}_lo"], row[f"{m}_hi"] = float(lo), float(hi)
        rows.append(row)
    return rows


def age_band(age: Any) -> str:
    """'<20', '20-39', '40-59', '60+', or 'unknown' (missing, negative or > 120 years)."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    # RSNA metadata holds a few impossible ages (e.g. 148, 155): entry errors, not old patients.
    if not math.isfinite(a) or a < 0 or a > 120:
        return UNKNOWN
    return "<20" if a < 20 else "20-39" if a < 40 else "40-59" if a < 60 else "60+"


def _group_labels(df: pd.DataFrame, var: str) -> pd.Series:
    if var == "age_band" and "age_band" not in df:
        if "age" not in df:
            raise ValueError("predictions: subgroup 'age_band' needs an 'age' column")
        return df["age"].map(age_band)
    if var not in df:
        raise ValueError(f"predictions: no column {var!r} to form subgroups from")
    col = df[var].astype(object)
    return col.where(col.notna(), UNKNOWN).astype(str)


def _ordered(labels: pd.Series, var: str) -> list[str]:
    present = set(labels)
    order = list(AGE_BANDS) if var == "age_band" else sorted(present - {UNKNOWN})
    return [g for g in [*order, UNKNOWN] if g in present]


def check_predictions(df: pd.DataFrame, name: str = "predictions") -> pd.DataFrame:
    """Validate a predictions table (needs `prob` and `target`); returns it with a fresh index."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name}: expected a DataFrame, got {type(df).__name__}")
    missing = [c for c in ("prob", "target") if c not in df]
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {missing}; expected patientId, prob, target, view, sex, age"
        )
    check_arrays(df["target"].to_numpy(), df["prob"].to_numpy(), f"{name}.target", f"{name}.prob")
    return df.reset_index(drop=True)


def subgroup_metrics(
    df: pd.DataFrame,
    *,
    threshold: float | Mapping[str, float] = 0.5,
    by: Sequence[str] = ("view", "sex", "age_band"),
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per (variable, group, threshold): n, n_pos, prevalence, counts, metrics and CIs.
    Missing values form an 'unknown' group, so the groups of one variable add up to the whole."""
    df = check_predictions(df)
    thr = as_thresholds(threshold)
    rows = []
    for var in by:
        labels = _group_labels(df, var)
        for g in _ordered(labels, var):
            sub = df[labels == g]
            for row in _metric_rows(sub["target"], sub["prob"], thr, n_boot, seed, alpha):
                rows.append({"variable": var, "group": g} | row)
    return pd.DataFrame(rows)


def summarize(
    pred: pd.DataFrame,
    *,
    thresholds: float | Mapping[str, float],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    by: Sequence[str] = ("view", "sex", "age_band"),
) -> dict[str, Any]:
    """JSON-ready summary of a predictions table at the given (validation-chosen) thresholds:
    top-level roc_auc, average_precision, brier (+ `_ci`), ece, per-threshold metrics with CIs,
    the reliability table and subgroup rows (groups whose column is absent are skipped)."""
    pred = check_predictions(pred)
    thr = as_thresholds(thresholds)
    rows = _metric_rows(pred["target"], pred["prob"], thr, n_boot, seed, alpha)
    first = rows[0]
    out: dict[str, Any] = {k: first[k] for k in ("n", "n_pos", "prevalence")}
    for m in RANKING_METRICS:
        out[m], out[f"{m}_ci"] = first[m], [first[f"{m}_lo"], first[f"{m}_hi"]]
    table = reliability(pred["target"], pred["prob"], n_bins)
    out |= {"ece": expected_calibration_error(table), "n_boot": n_boot, "seed": seed}
    out |= {"alpha": alpha, "thresholds": {}}
    for row in rows:
        entry = {"threshold": row["threshold"]}
        entry |= {m: row[m] for m in (*THRESHOLD_METRICS, *COUNTS)}
        entry["ci"] = {m: [row[f"{m}_lo"], row[f"{m}_hi"]] for m in THRESHOLD_METRICS}
        out["thresholds"][row["threshold_name"]] = entry
    out["reliability"] = table.to_dict("records")
    usable = [v for v in by if v in pred or (v == "age_band" and "age" in pred)]
    sub = (
        subgroup_metrics(pred, threshold=thr, by=usable, n_boot=n_boot, seed=seed, alpha=alpha)
        if usable
        else pd.DataFrame()
    )
    out["subgroups"] = sub.to_dict("records")
    return jsonable(out)


def jsonable(obj: Any) -> Any:
    """Plain Python types for json: numpy scalars unwrapped, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
