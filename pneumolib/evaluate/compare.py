"""Runs compared on the same patients: each run's metrics with 95% CIs, and for every pair the
paired difference (one bootstrap of the patients, shared by all runs) and DeLong's test for the
AUC difference. The question the study asks: does fine-tuning beat feature extraction and
training from scratch on these patients, or is the gap within the noise?
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pneumolib.base.errors import UsageError
from pneumolib.base.metrics import (
    binary_metrics,
    bootstrap_distribution,
    check_arrays,
    percentile_ci,
)
from pneumolib.base.rundir import read_predictions

COMPARED = ("roc_auc", "average_precision", "accuracy", "precision", "recall")


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each row of x (k, n), ties sharing their mean rank."""
    return np.vstack([stats.rankdata(row) for row in np.atleast_2d(x)])


def delong(y: Any, p_a: Any, p_b: Any) -> dict[str, float]:
    """DeLong, DeLong & Clarke-Pearson (1988): the two AUCs of scores `p_a`, `p_b` (n,) on the
    same labels `y` (n,), their difference, its standard error, z and two-sided p-value.

    Placements by midranks (Sun & Xu 2014), O(n log n); ties count one half, as in the AUC.
    """
    y, p_a = check_arrays(y, p_a)
    _, p_b = check_arrays(y, p_b, p_name="p_b")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise UsageError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    scores = np.vstack([p_a, p_b])
    x, z = scores[:, pos], scores[:, neg]
    ranks_all = _midranks(np.hstack([x, z]))
    auc = (ranks_all[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)
    v10 = (ranks_all[:, :m] - _midranks(x)) / n  # per positive: share of negatives below it
    v01 = 1.0 - (ranks_all[:, m:] - _midranks(z)) / m  # per negative: share of positives above
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    se = math.sqrt(max(var, 0.0))
    zval = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "diff": diff,
        "se": se,
        "z": zval,
        "p_value": float(2 * stats.norm.sf(abs(zval))),
    }


def paired_predictions(runs: Sequence[str | Path], split: str = "test") -> pd.DataFrame:
    """The runs' `predictions_<split>.csv` joined on patientId -> DataFrame(patientId, target,
    one probability column per run, named by the run folder). Refuses runs whose targets
    disagree (other caches) or that share no patient."""
    names = [Path(r).name for r in runs]
    if len(set(names)) != len(names):
        names = [str(r) for r in runs]
    table: pd.DataFrame | None = None
    for run, name in zip(runs, names, strict=True):
        pred = read_predictions(run, split)[["patientId", "target", "prob"]]
        pred = pred.rename(columns={"prob": name, "target": f"target_{name}"})
        table = pred if table is None else table.merge(pred, on="patientId", how="inner")
    assert table is not None  # runs is not empty: compare_runs asks for two or more
    targets = table[[f"target_{n}" for n in names]].to_numpy()
    if len(table) == 0:
        raise UsageError(f"the runs {names} share no {split} patient; compare runs of one cache")
    if (targets != targets[:, :1]).any():
        raise UsageError(f"the runs {names} disagree on the targets: they come from other caches")
    table = table.drop(columns=[f"target_{n}" for n in names]).assign(target=targets[:, 0])
    return table[["patientId", "target", *names]]


def _delong_p(y: np.ndarray, p_a: pd.Series, p_b: pd.Series) -> float:
    """DeLong's p-value, NaN where it is undefined (fewer than 2 positives or negatives)."""
    pos = int(np.sum(y))
    return delong(y, p_a, p_b)["p_value"] if min(pos, len(y) - pos) >= 2 else math.nan


def compare_runs(
    runs: Sequence[str | Path],
    split: str = "test",
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Each run's AUC, AP, accuracy, precision and recall (at `threshold`) on the patients all
    runs scored, with 95% bootstrap CIs; and for each pair (a, b) the difference a - b with a
    paired 95% CI (the same `n_boot` resamples of patients for every run) and DeLong's p-value
    for the AUC difference. Returns {"runs": one row per run, "pairs": one row per pair}."""
    if len(runs) < 2:
        raise UsageError("compare_runs: give at least two runs")
    table = paired_predictions(runs, split)
    y = table["target"].to_numpy()
    names = list(table.columns[2:])
    boot, rows = {}, []
    for name in names:
        p = table[name].to_numpy()
        dist = bootstrap_distribution(y, p, thresholds=threshold, n_boot=n_boot, seed=seed)
        boot[name] = {k: np.ravel(dist[k]) for k in COMPARED}  # the same resamples for all
        point = binary_metrics(y, p, threshold)
        row = {"run": name, "n": len(y), "n_pos": int(y.sum())}
        for k in COMPARED:
            lo, hi = percentile_ci(boot[name][k], 0.05)
            row |= {k: point[k], f"{k}_lo": float(lo), f"{k}_hi": float(hi)}
        rows.append(row)
    pairs = []
    for a, b in itertools.combinations(names, 2):
        row = {"a": a, "b": b, "delong_p": _delong_p(y, table[a], table[b])}
        for k in COMPARED:
            d = boot[a][k] - boot[b][k]
            lo, hi = percentile_ci(d, 0.05)
            diff = rows[names.index(a)][k] - rows[names.index(b)][k]
            row |= {f"{k}_diff": diff, f"{k}_diff_lo": float(lo), f"{k}_diff_hi": float(hi)}
        pairs.append(row)
    return {"runs": pd.DataFrame(rows), "pairs": pd.DataFrame(pairs)}


def comparison_text(result: dict[str, pd.DataFrame]) -> str:
    """The two tables of `compare_runs` as plain text, AUC differences first."""
    runs = result["runs"]
    lines = [f"{len(runs)} runs on the same {int(runs['n'].iloc[0])} patients:"]
    for r in runs.itertuples():
        lines.append(
            f"  {r.run}: AUC {r.roc_auc:.3f} [{r.roc_auc_lo:.3f}, {r.roc_auc_hi:.3f}], "
            f"AP {r.average_precision:.3f}, accuracy {r.accuracy:.3f}, "
            f"precision {r.precision:.3f}, recall {r.recall:.3f}"
        )
    for r in result["pairs"].itertuples():
        lines.append(
            f"  {r.a} - {r.b}: AUC {r.roc_auc_diff:+.3f} [{r.roc_auc_diff_lo:+.3f}, "
            f"{r.roc_auc_diff_hi:+.3f}] (paired bootstrap), "
            + (
                f"DeLong p = {r.delong_p:.3g}"
                if math.isfinite(r.delong_p)
                else "DeLong n/a (needs 2 positives and 2 negatives)"
            )
        )
    return "\n".join(lines + [f"  {v}" for v in verdicts(result)])


def verdicts(result: dict[str, pd.DataFrame]) -> list[str]:
    """One sentence per pair of `compare_runs` saying what the paired AUC interval shows: a
    difference when it excludes 0, else that these patients cannot tell the runs apart."""
    out = []
    for r in result["pairs"].itertuples():
        lo, hi = r.roc_auc_diff_lo, r.roc_auc_diff_hi
        ci = f"AUC difference {r.roc_auc_diff:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
        if not (math.isfinite(lo) and math.isfinite(hi)):
            out.append(f"{r.a} vs {r.b}: {ci}; undefined on these patients (one class only).")
        elif lo > 0 or hi < 0:
            better, worse = (r.a, r.b) if lo > 0 else (r.b, r.a)
            out.append(
                f"{better} ranks these patients better than {worse}: {ci}, an interval that "
                "excludes 0."
            )
        else:
            out.append(
                f"{r.a} and {r.b} are not shown to differ: {ci} includes 0, so a gap of this "
                "size could be resampling noise; more patients would be needed to tell."
            )
    return out
