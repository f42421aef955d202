"""What a run's numbers show, as sentences: notebooks 03 and 04 print them under the tables they
summarise, and the demo report quotes them, so a figure a reader sees is always one the code just
read from the run (a training history, `metrics_<split>.json`, `calibration.json`, the tables of
`compare_runs`). Numbers at 3 decimals, intervals as "[lo, hi]" (`base.fmt`), "n/a" where
undefined. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pneumolib.base.fmt import interval, num, with_ci
from pneumolib.evaluate.calibration import Calibration, activation, logit, raw_logits
from pneumolib.train.best_epoch import best_epoch_index

__all__ = [
    "best_epoch_sentence",
    "best_epochs_sentence",
    "calibration_sentence",
    "calibration_steps",
    "prior_sentence",
    "ranking_sentence",
    "risk_band_sentence",
    "split_sentence",
    "subgroup_sentence",
    "three_class_sentence",
    "threshold_sentences",
    "tta_sentence",
]


def _ci(pair: Any) -> str:
    """ " [lo, hi]" with its leading space, or "" when there is no defined interval."""
    text = interval(pair)
    return f" {text}" if text else ""


# --------------------------------------------------------------------------- training (03)
def best_epoch_sentence(history: pd.DataFrame, monitor: str = "auc", *, last: int = 5) -> str:
    """A run's metrics per epoch (`fit(...)["history"]`, or RUN/metrics.csv) -> which epoch
    best.pt holds (the trainer's rule, `best_epoch_index`), its val AUC and loss, and the
    range of val AUC over the `last` epochs."""
    i = best_epoch_index(history, monitor)
    if i is None:
        return f"No epoch of {len(history)} has a usable validation score: best.pt is the first."
    best, tail = history.iloc[i], history["val_auc"].iloc[-last:]
    return (
        f"best.pt holds epoch {int(best['epoch'])} of {len(history)} (val AUC "
        f"{num(best['val_auc'])}, val loss {num(best['val_loss'])}); over the last {len(tail)} "
        f"epochs val AUC stayed between {num(tail.min())} and {num(tail.max())}."
    )


def best_epochs_sentence(table: pd.DataFrame) -> str:
    """`train.best_epochs` (one row per run) -> the runs by best validation AUC, highest
    first, each with the epoch it was reached at."""
    rows = table.sort_values("val_auc", ascending=False, na_position="last")
    parts = []
    for run, r in rows.iterrows():
        epoch = r["best_epoch"]  # a float column when a run has no best epoch (NaN)
        epoch = int(epoch) if epoch is not None and math.isfinite(epoch) else None
        parts.append(f"{run} {num(r['val_auc'])} (epoch {num(epoch)} of {int(r['epochs'])})")
    return "Best validation AUC, highest first: " + ", ".join(parts) + "."


def ranking_sentence(result: Mapping[str, pd.DataFrame]) -> str:
    """`compare_runs` -> the runs by AUC on the shared patients, highest first, each with its
    95% interval, and the widest interval's width (what one run's AUC can be trusted to)."""
    runs = result["runs"].sort_values("roc_auc", ascending=False, na_position="last")
    first = runs.iloc[0]
    parts = [
        f"{r.run} {with_ci(r.roc_auc, [r.roc_auc_lo, r.roc_auc_hi])}" for r in runs.itertuples()
    ]
    width = float((runs["roc_auc_hi"] - runs["roc_auc_lo"]).max())
    return (
        f"On the same {int(first['n'])} patients ({int(first['n_pos'])} positive), AUC "
        f"highest first: {', '.join(parts)}. The widest interval spans {num(width)}: gaps smaller "
        "than that are not settled by each run's own interval; the paired intervals test them."
    )


# --------------------------------------------------------------------------- one split (04)
def split_sentence(metrics: Mapping[str, Any]) -> str:
    """`metrics_<split>.json` -> its ROC AUC and average precision with their 95% intervals,
    the AP of a random ranking (the prevalence) and how wide the AUC interval is."""
    auc_ci = metrics.get("roc_auc_ci") or [None, None]
    width = (
        f"; the AUC interval is {num(auc_ci[1] - auc_ci[0])} wide"
        if interval(auc_ci)
        else "; the AUC has no interval (one class only)"
    )
    return (
        f"{metrics['split']}: ROC AUC {with_ci(metrics['roc_auc'], auc_ci)} and average "
        f"precision {with_ci(metrics['average_precision'], metrics.get('average_precision_ci'))}"
        f" (a random ranking scores {num(metrics['prevalence'])}) on {metrics['n']} patients "
        f"({metrics['n_pos']} positive){width}."
    )


def _fixed(name: str, value: float) -> bool:
    """A threshold named by its own value ("0.5"): a policy constant, not chosen on val."""
    try:
        return float(name) == value
    except ValueError:
        return False


def threshold_sentences(val: Mapping[str, Any], test: Mapping[str, Any]) -> list[str]:
    """The val and test metrics of one run -> the thresholds chosen on val (which of them
    coincide, which are fixed), then per threshold how recall and specificity move from val to
    test."""
    values = {k: float(v["threshold"]) for k, v in val["thresholds"].items()}
    chosen = {k: t for k, t in values.items() if not _fixed(k, t)}
    same: dict[float, list[str]] = {}
    for name, t in chosen.items():
        same.setdefault(t, []).append(name)
    notes = [" and ".join(names) + " coincide" for names in same.values() if len(names) > 1]
    notes += [f"{k} is fixed" for k in values if k not in chosen]
    head = "Chosen on val: " + ", ".join(f"{k} {num(t)}" for k, t in chosen.items())
    lines = [head + (f" ({'; '.join(notes)})." if notes else ".")]
    for name, t in values.items():
        a, b = val["thresholds"][name], test["thresholds"].get(name)
        if b is None:
            continue
        lines.append(
            f"{name} ({num(t)}): recall {num(a['recall'])} on val, {num(b['recall'])} on test "
            f"({b['recall'] - a['recall']:+.3f}); specificity {num(a['specificity'])} on val, "
            f"{num(b['specificity'])} on test."
        )
    return lines


def subgroup_sentence(
    metrics: Mapping[str, Any], variable: str = "view", threshold_name: str = "youden"
) -> str:
    """`metrics_<split>.json` -> each group of `variable` (rows at `threshold_name`): its
    patients, positives and AUC with its interval; groups whose AUC is undefined (one class
    only) are named apart."""
    rows = [
        r
        for r in metrics.get("subgroups", [])
        if r["variable"] == variable and r["threshold_name"] == threshold_name
    ]
    if not rows:
        return f"No {variable} subgroups in these metrics."
    shown, undefined = [], []
    for r in rows:
        who = f"{r['group']} ({r['n']} patients, {r['n_pos']} positive)"
        auc = r.get("roc_auc")
        if auc is None or (isinstance(auc, float) and not math.isfinite(auc)):
            undefined.append(who)
        else:
            shown.append(f"{who} AUC {with_ci(auc, [r.get('roc_auc_lo'), r.get('roc_auc_hi')])}")
    text = f"By {variable}: " + ("; ".join(shown) if shown else "no group has both classes") + "."
    if undefined:
        text += f" AUC undefined (one class only): {'; '.join(undefined)}."
    return text


# --------------------------------------------------------------------------- calibration (04)
def calibration_sentence(metrics: Mapping[str, Any]) -> str:
    """What calibration did on a split, in the numbers of metrics_<split>.json's `calibration`
    block: the mean probability against the share positive, and ECE, before and after."""
    cal, split = metrics.get("calibration"), metrics.get("split", "test")
    if cal is None:  # metrics written before calibration existed
        return f"Calibration: expected calibration error {num(metrics.get('ece'))} on {split}."
    raw, after, frac = cal["raw"], cal["calibrated"], cal["prevalence"]
    why = (
        "balanced batches train the model as if half the patients were positive"
        if raw["mean_prob"] > frac
        else "the model has not learned to call positives with confidence"
    )
    fitted = {
        "temperature": f"a temperature ({cal['temperature']:.2f})",
        "platt": "Platt scaling (a scale and a bias)",
    }.get(cal["method"], "")
    return (
        f"Calibration (figures/reliability_{split}.png): the network's raw probabilities "
        f"average {raw['mean_prob']:.2f} on {split} against {frac:.2f} positive ({why}). The prior "
        f"correction and {fitted or cal['method']}, fitted on val (calibration.json), bring the "
        f"mean to {after['mean_prob']:.2f} and the expected calibration error from "
        f"{num(raw['ece'])}{_ci(raw.get('ece_ci'))} to {num(after['ece'])}"
        f"{_ci(after.get('ece_ci'))}, leaving the ranking (AUC) as it was: "
        "`prob` and `predict`'s `probability` are now a risk, the raw score stays as `prob_raw`."
    )


def prior_sentence(cal: Calibration) -> str:
    """A binary run's calibration.json -> the train prevalence, the log-odds training added
    (undone by the prior correction), what a patient at that prevalence was scored, and the
    fitted map."""
    pi, shift = cal.train_prevalence, float(cal.shift[-1])
    if pi is None:
        return f"Prior correction: {shift:+.3f} added to every logit."
    scored = float(activation(np.array([[float(logit(pi)) - shift]]))[0, -1])
    fitted = {
        "platt": f"Platt's fit then gives sigmoid(a x + b) with a = {num(cal.platt[0])}, "
        f"b = {num(cal.platt[1])}.",
        "temperature": f"The fitted temperature is {num(cal.temperature)}.",
    }.get(cal.method, f"Then the {cal.method} map is fitted.")
    return (
        f"Train prevalence {num(pi)}: training added {-shift:+.3f} to every logit, so a patient "
        f"whose risk is {num(pi)} was scored {num(scored)}; the prior correction undoes it "
        f"(x = logit {shift:+.3f}). {fitted}"
    )


def calibration_steps(preds: Mapping[str, pd.DataFrame], cal: Calibration) -> pd.DataFrame:
    """{split: a binary run's predictions (`prob_raw, prob, target`)} -> one row per split: the
    mean raw probability, after the prior correction alone, calibrated, and the share
    positive."""
    rows = {}
    for name, pred in preds.items():
        logits = raw_logits(pred[["prob_raw"]].to_numpy())  # (N, 1)
        rows[name] = {
            "raw": float(pred["prob_raw"].mean()),
            "prior corrected": float(activation(logits + np.asarray(cal.shift))[:, -1].mean()),
            "calibrated": float(pred["prob"].mean()),
            "positive": float(pred["target"].mean()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _band(pred: pd.DataFrame, column: str, lo: float, hi: float) -> tuple[int, int, str]:
    inside = pred[pred[column].between(lo, hi)]
    return len(inside), int(inside["target"].sum()), num(inside[column].mean())


def risk_band_sentence(pred: pd.DataFrame, lo: float, hi: float) -> str:
    """Predictions (`prob`, `prob_raw`, `target`) -> how many patients the calibrated and the
    raw probabilities put in [lo, hi], their mean probability, and how many were positive
    (share with its 95% Wilson interval)."""
    from pneumolib.evaluate.figures import wilson_interval  # matplotlib: only when called

    parts = []
    for name, column in (("calibrated", "prob"), ("raw", "prob_raw")):
        n, k, mean = _band(pred, column, lo, hi)
        if n == 0:
            parts.append(f"the {name} probabilities put no patient there")
            continue
        a, b = (float(v) for v in wilson_interval(k, n))
        parts.append(
            f"the {name} probabilities put {n} patients there (mean {mean}), {k} of them "
            f"positive ({num(k / n)}, 95% CI {interval([a, b])})"
        )
    return f"Between {num(lo)} and {num(hi)}: {'; '.join(parts)}."


# --------------------------------------------------------------------------- options (04)
def three_class_sentence(block: Mapping[str, Any]) -> str:
    """A `three_class_metrics` dict -> one-vs-rest AUC per class, macro-F1 (with intervals)
    and how often each class is the most probable one."""
    classes = block["classes"]
    aucs = ", ".join(f"{c} {with_ci(block['auc_ovr'][c], block['auc_ovr_ci'][c])}" for c in classes)
    called = np.asarray(block["confusion"]).sum(axis=0)  # (3,) patients per predicted class
    calls = ", ".join(f"{c} for {int(k)}" for c, k in zip(classes, called, strict=True))
    return (
        f"One-vs-rest AUC: {aucs}; macro-F1 {with_ci(block['macro_f1'], block['macro_f1_ci'])}. "
        f"The most probable class is {calls} of {int(called.sum())} patients."
    )


def tta_sentence(plain: Mapping[str, Any], tta: Mapping[str, Any]) -> str:
    """The metrics of one split without and with test-time augmentation -> the variants
    averaged and the AUC and ECE of each."""
    variants: Sequence[str] = tta.get("tta_variants", [])
    return (
        f"TTA averages {len(variants)} variants ({', '.join(variants)}). ROC AUC "
        f"{with_ci(plain['roc_auc'], plain.get('roc_auc_ci'))} without, "
        f"{with_ci(tta['roc_auc'], tta.get('roc_auc_ci'))} with; ECE {num(plain.get('ece'))} "
        f"without, {num(tta.get('ece'))} with."
    )
