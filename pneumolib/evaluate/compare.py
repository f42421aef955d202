"""Runs compared on the same patients: each run's metrics with 95% CIs, and for every pair the
paired difference (one bootstrap of the patients, shared by all runs) and DeLong's test for the
AUC difference. Runs with boxes (RUN/boxes_<split>.csv: `cam` on a classifier, `evaluate` on a
detector) are also compared on the challenge's score, `rsna_map`, the same way. The question the
study asks: does fine-tuning beat feature extraction and training from scratch on these
patients, or is the gap within the noise?
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from pneumolib.base.rundir import boxes_path, predictions_path, read_predictions, trained_config
from pneumolib.data.labels import open_cache, original_sizes
from pneumolib.data.letterbox import truth_boxes

if TYPE_CHECKING:
    pass

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


def rsna_map_difference(
    truth: dict[str, Any], a: Any, b: Any, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """`rsna_map` of predictions `a` minus that of `b` on the patients of `truth` (both forms
    of `evaluate.boxes.image_scores`): `value`, `ci` (95%, the same `n_boot` resamples of the
    patients for both, as `rsna_map` draws them) and `n_patients`."""
    from pneumolib.evaluate.boxes import bootstrap_means, image_scores  # torch: only here

    s_a, s_b = (image_scores(truth, p).to_numpy() for p in (a, b))
    value = float(np.nanmean(s_a) - np.nanmean(s_b)) if len(s_a) else math.nan
    ci = [math.nan, math.nan]
    if n_boot > 0 and len(s_a):
        with np.errstate(all="ignore"):
            diff = bootstrap_means(s_a, n_boot, seed) - bootstrap_means(s_b, n_boot, seed)
        ci = [float(v) for v in percentile_ci(diff, 0.05)]
    return {"value": value, "ci": ci, "n_patients": len(s_a)}


def _split_truth(run: str | Path, split: str, ids: set[str]) -> dict[str, np.ndarray]:
    """The expert boxes (original pixels) of the patients `ids` of `split` of run's cache."""
    cache = Path(trained_config(run).config.cache)
    index, stats = open_cache(cache)
    rows = index[(index["split"] == split) & index["patientId"].astype(str).isin(ids)]
    heights, widths, note = original_sizes(rows, where=cache / "index.csv")
    if note:
        print(note)
    return truth_boxes(rows.reset_index(drop=True), cache_size=stats.size, heights=heights,
                       widths=widths)  # fmt: skip


def compare_boxes(
    runs: Sequence[str | Path], split: str = "test", *, n_boot: int = 1000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Each run's `rsna_map` of RUN/boxes_<split>.csv on the patients all runs have boxes for
    (expert boxes from the first run's cache), with 95% CIs, and per pair the paired difference
    a - b. Returns {"box_runs": one row per run, "box_pairs": one row per pair}."""
    from pneumolib.evaluate.boxes import rsna_map  # torch: only for boxes

    names = [Path(r).name for r in runs]
    if len(set(names)) != len(names):
        names = [str(r) for r in runs]
    from pneumolib.evaluate.boxes import read_box_csv  # torch: only for boxes

    boxes = {n: read_box_csv(boxes_path(r, split)) for n, r in zip(names, runs, strict=True)}
    ids = set.intersection(*(set(b) for b in boxes.values()))
    truth = _split_truth(runs[0], split, ids)
    if not truth:
        raise UsageError(f"the runs {names} share no {split} patient with boxes; compare runs "
                         "of one cache")  # fmt: skip
    own = {n: {p: b[p] for p in truth} for n, b in boxes.items()}
    rows = []
    for n in names:
        s = rsna_map(truth, own[n], n_boot=n_boot, seed=seed)
        rows.append({"run": n, "n": len(truth), "n_images": s["n_images"], "rsna_map": s["value"],
                     "rsna_map_lo": s["ci"][0], "rsna_map_hi": s["ci"][1]})  # fmt: skip
    pairs = []
    for a, b in itertools.combinations(names, 2):
        d = rsna_map_difference(truth, own[a], own[b], n_boot=n_boot, seed=seed)
        pairs.append({"a": a, "b": b, "rsna_map_diff": d["value"],
                      "rsna_map_diff_lo": d["ci"][0], "rsna_map_diff_hi": d["ci"][1]})  # fmt: skip
    return {"box_runs": pd.DataFrame(rows), "box_pairs": pd.DataFrame(pairs)}


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
    for the AUC difference. Returns {"runs": one row per run, "pairs": one row per pair}, and
    where every run has RUN/boxes_<split>.csv, `compare_boxes`' two tables too (only those
    where a run, as a detector run, has no predictions_<split>.csv)."""
    if len(runs) < 2:
        raise UsageError("compare_runs: give at least two runs")
    boxes = all(boxes_path(r, split).is_file() for r in runs)
    result = compare_boxes(runs, split, n_boot=n_boot, seed=seed) if boxes else {}
    if boxes and not all(predictions_path(r, split).is_file() for r in runs):
        return result  # a detector run scores boxes; its image ranking is in metrics_<split>.json
    return result | _compare_predictions(runs, split, threshold=threshold, n_boot=n_boot,
                                         seed=seed)  # fmt: skip


def _compare_predictions(
    runs: Sequence[str | Path], split: str, *, threshold: float, n_boot: int, seed: int
) -> dict[str, pd.DataFrame]:
    """`compare_runs`' part on RUN/predictions_<split>.csv (see there)."""
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
    """The tables of `compare_runs` as plain text, AUC differences first, then rsna_map's."""
    lines = _ranking_lines(result) if "runs" in result else []
    if "box_runs" in result:
        lines += _box_lines(result)
    return "\n".join(lines)


def _box_lines(result: dict[str, pd.DataFrame]) -> list[str]:
    runs = result["box_runs"]
    lines = [f"rsna_map (boxes) on the same {int(runs['n'].iloc[0])} patients:"]
    for r in runs.itertuples():
        lines.append(f"  {r.run}: rsna_map {r.rsna_map:.3f} [{r.rsna_map_lo:.3f}, "
                     f"{r.rsna_map_hi:.3f}] on {r.n_images} images")  # fmt: skip
    for r in result["box_pairs"].itertuples():
        lo, hi = r.rsna_map_diff_lo, r.rsna_map_diff_hi
        verdict = ("excludes 0" if (lo > 0 or hi < 0) else "includes 0: not shown to differ"
                   ) if math.isfinite(lo) and math.isfinite(hi) else "undefined"  # fmt: skip
        lines.append(f"  {r.a} - {r.b}: rsna_map {r.rsna_map_diff:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                     f"(paired bootstrap; the interval {verdict})")  # fmt: skip
    return lines


def _ranking_lines(result: dict[str, pd.DataFrame]) -> list[str]:
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
    return lines + [f"  {v}" for v in verdicts(result)]


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
