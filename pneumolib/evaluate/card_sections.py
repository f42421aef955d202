"""The sections of a model card (`pneumolib.evaluate.card`) as Markdown lines, each from the
figures it is
handed: metrics dicts as `evaluate` writes them, the cache's index table and stats, localisation
summaries as `cam_run` writes them. Numbers: 3 decimals, 95% CIs as "[lo, hi]", "n/a" where
undefined; nothing here computes a metric, it only counts rows of index.csv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pneumolib.base.fmt import num, with_ci
from pneumolib.data.cache_stats import CacheStats

SUBGROUP_THRESHOLDS = ("youden", "0.5")  # the operating point of the subgroup table, if present
RATES = ("accuracy", "precision", "recall", "specificity", "f1")


# --------------------------------------------------------------------------- formatting
def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def not_measured(what: str, command: str) -> str:
    return f"Not measured ({what}): run `{command}`."


# --------------------------------------------------------------------------- data
def split_counts(index: pd.DataFrame) -> list[list[Any]]:
    """Per split (train, val, test, all): patients, positive, prevalence, AP and PA films and
    the prevalence within each view, from index.csv."""
    rows = []
    parts = [(s, index[index["split"] == s]) for s in ("train", "val", "test")]
    for name, part in [*parts, ("all", index)]:
        if part.empty:
            continue
        view = part["view"].astype(str)
        ap, pa = part[view == "AP"], part[view == "PA"]
        rows.append(
            [name, len(part), int(part["target"].sum()), num(float(part["target"].mean()))]
            + [len(ap), len(pa)]
            + [num(float(v["target"].mean())) if len(v) else "n/a" for v in (ap, pa)]
        )
    return rows


SPLIT_RULES = {
    "stratified": "within every (label, view) stratum a seeded shuffle (seed {seed}) puts "
    "{test_frac:.0%} of the patients in test and {val_frac:.0%} in val, the rest in train, so "
    "class and view proportions hold in every split",
    "course": "the course's rule: the first 24,000 of RSNA's 26,684 patients (the same share of "
    "a smaller folder) train, the rest val; no test split",
}


def source_lines(synthetic: bool | None, where: str, stats: CacheStats | None) -> list[str]:
    raw = f"`{stats.source}`" if stats and stats.source is not None else "a folder not recorded"
    if synthetic is True:
        return [
            f"- Source: synthetic phantoms made by `pneumolib.data.synth` in {raw} "
            f"(marked synthetic; read from {where}). They have RSNA's layout, prevalence by view "
            "and a planted label noise, but no patient behind them."
        ]
    if synthetic is False:
        return [
            f"- Source: {raw}, not marked synthetic (read from {where}): taken to be the RSNA "
            "Pneumonia Detection Challenge (2018) training set, frontal chest radiographs from "
            "the NIH ChestX-ray14 collection labelled for lung opacity by radiologists of RSNA "
            "and the Society of Thoracic Radiology."
        ]
    return [
        f"- Source: {raw}; provenance not recorded (the cache predates the record): rebuild "
        "the cache (`preprocess --rebuild`) to record whether it is synthetic."
    ]


def data_section(
    *,
    cache: str,
    stats: CacheStats | None,
    index: pd.DataFrame | None,
    n_errors: int | None,
    synthetic: bool | None,
    provenance_from: str,
) -> list[str]:
    lines = ["## Training and evaluation data", ""]
    lines += source_lines(synthetic, provenance_from, stats)
    if stats is None or index is None:
        return lines + [
            "",
            f"The cache `{cache}` is not there (or lacks index.csv / stats.json): the counts per "
            "split, the prevalence and the AP/PA mix are not available here. The metrics "
            "below give the patients and positives they were computed on.",
            "",
        ]
    params = stats.params or {}
    rule = stats.split_rule if stats.split_rule is not None else params.get("split_rule")
    how = SPLIT_RULES.get(str(rule), "not described").format(
        seed=stats.seed if stats.seed is not None else params.get("seed"),
        val_frac=params.get("val_frac", math.nan),
        test_frac=params.get("test_frac", math.nan),
    )
    lines += [
        f"- Cache: `{cache}`, {stats.size} px images, made by pneumolib "
        f"{stats.package_version or '?'} on {stats.created or '?'}; "
        f"{num(n_errors) if n_errors is not None else 'n/a'} files could not be read "
        "(errors.csv).",
        f"- Split rule `{rule}`: {how}. Train fits the weights; val picks the epoch kept "
        "(best.pt) and the operating thresholds, so its figures are optimistic; test is used "
        "once, with val's thresholds.",
        "",
        "Patients per split (index.csv); prevalence is the share labelled positive:",
        "",
    ]
    header = ["split", "patients", "positive", "prevalence", "AP films", "PA films"]
    header += ["prevalence on AP", "prevalence on PA"]
    return lines + table(header, split_counts(index)) + [""]


# --------------------------------------------------------------------------- metrics
def ranking_rows(metrics: Mapping[str, Mapping[str, Any] | None]) -> list[list[Any]]:
    rows = []
    for split, m in metrics.items():
        if m is None:
            continue
        rows.append(
            [split, m["n"], m["n_pos"], num(m.get("prevalence"))]
            + [with_ci(m.get(k), m.get(f"{k}_ci")) for k in ("roc_auc", "average_precision")]
            + [with_ci(m.get("brier"), m.get("brier_ci")), num(m.get("ece"))]
        )
    return rows


def threshold_rows(m: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for name, t in m["thresholds"].items():
        cis = t.get("ci", {})
        rows.append([name, num(t["threshold"])] + [with_ci(t.get(r), cis.get(r)) for r in RATES])
    return rows


def metrics_section(metrics: Mapping[str, Mapping[str, Any] | None], run: str) -> list[str]:
    first = next((m for m in metrics.values() if m is not None), None)
    lines = ["## Metrics", ""]
    if first is None:
        cmd = f"python -m pneumolib evaluate --run {run} --split val"
        return lines + [not_measured("no metrics_val.json or metrics_test.json", cmd), ""]
    lines += [
        "Ranking (ROC AUC, average precision), probability quality (Brier score, expected "
        "calibration error) and, at each operating threshold chosen on val and applied "
        "unchanged to test, accuracy, precision, recall (sensitivity), specificity and F1. "
        f"Intervals: 95% percentile bootstrap over patients ({first.get('n_boot', '?')} "
        "resamples). From metrics_val.json and metrics_test.json.",
        "",
    ]
    header = ["split", "patients", "positive", "prevalence", "ROC AUC [95% CI]"]
    header += ["average precision [95% CI]", "Brier [95% CI]", "ECE"]
    lines += table(header, ranking_rows(metrics)) + [""]
    for split, m in metrics.items():
        if m is None:
            cmd = f"python -m pneumolib evaluate --run {run} --split {split}"
            lines += [f"### {split}", "", not_measured(f"no metrics_{split}.json", cmd), ""]
            continue
        source: dict[str | None, str] = {
            "val": "chosen on val",
            "given": "given",
            "fixed": "fixed at 0.5",
        }
        how = source.get(m.get("threshold_source"), "of unknown origin")
        lines += [f"### {split} (thresholds {how})", ""]
        header = ["threshold", "value", *(f"{r} [95% CI]" for r in RATES)]
        lines += table(header, threshold_rows(m)) + [""]
        if "three_class" in m:
            lines += three_class_lines(m["three_class"], split)
    return lines


def three_class_lines(tc: Mapping[str, Any], split: str) -> list[str]:
    """The three-class head's own figures: one-vs-rest AUC per class, macro F1, confusion."""
    classes = list(tc["classes"])
    lines = [
        f"#### Three classes ({split})",
        "",
        f"Macro F1 {with_ci(tc.get('macro_f1'), tc.get('macro_f1_ci'))}; "
        + (
            f"accuracy of the most probable class {num(tc['accuracy'])}; "
            if "accuracy" in tc
            else ""
        )
        + "the pneumonia probability above is P(Lung Opacity).",
        "",
    ]
    rows = [
        [c, tc["n_per_class"][c], with_ci(tc["auc_ovr"].get(c), tc.get("auc_ovr_ci", {}).get(c))]
        for c in classes
    ]
    lines += table(["class", "patients", "AUC one-vs-rest [95% CI]"], rows) + [""]
    lines += ["Confusion (rows: true class, columns: predicted):", ""]
    conf = [[c, *counts] for c, counts in zip(classes, tc["confusion"], strict=True)]
    return lines + table(["true \\ predicted", *classes], conf) + [""]


def calibration_section(metrics: Mapping[str, Mapping[str, Any] | None], run: str) -> list[str]:
    split = "test" if metrics.get("test") else "val" if metrics.get("val") else None
    lines = ["## Calibration", ""]
    if split is None:
        cmd = f"python -m pneumolib evaluate --run {run} --split test"
        return lines + [not_measured("no metrics files", cmd), ""]
    m = metrics[split]
    assert m is not None  # split was chosen because metrics.get(split) is truthy
    rows = [
        [f"{r['lo']:.1f}-{r['hi']:.1f}", r["count"], num(r["mean_pred"]), num(r["observed"])]
        for r in m.get("reliability", [])
        if r["count"]
    ]
    cal = m.get("calibration")
    if cal is None:  # a run evaluated before calibration existed
        lines += [
            f"On {split}: expected calibration error {num(m.get('ece'))}, Brier score "
            f"{with_ci(m.get('brier'), m.get('brier_ci'))}. Balanced batches and a positive-"
            "class weight train the model as if positives were commoner than they are, so a "
            "probability here is a score, not a risk, until it is recalibrated: run "
            f"`python -m pneumolib evaluate --run {run} --split test` to fit calibration.json.",
            "",
        ]
    else:
        lines += calibration_lines(cal, split)
    header = ["predicted probability", "patients", "mean predicted", "observed positive"]
    return lines + table(header, rows) + [""]


def calibration_lines(cal: Mapping[str, Any], split: str) -> list[str]:
    """The raw and calibrated figures of a metrics file's `calibration` block, as a table."""
    raw, after = cal["raw"], cal["calibrated"]
    rows = [
        [name, with_ci(raw.get(k), raw.get(f"{k}_ci")), with_ci(after.get(k), after.get(f"{k}_ci"))]
        for k, name in (("ece", "expected calibration error"), ("brier", "Brier score"),
                        ("nll", "negative log-likelihood"))
    ]  # fmt: skip
    rows.append(["mean probability", num(raw.get("mean_prob")), num(after.get("mean_prob"))])
    how = {
        "temperature": f"a temperature ({num(cal.get('temperature'), digits=2)})",
        "platt": "Platt scaling (a scale and a bias: "
        + ", ".join(num(v, digits=2) for v in cal.get("platt") or [])
        + ")",
    }.get(cal["method"], cal["method"])
    return [
        "Balanced batches and a positive-class weight train the model as if positives were "
        "commoner than they are; the prior correction undoes that with the train prevalence "
        f"(logit shift {num((cal.get('shift') or [None])[-1], digits=2)}), then {how} is fitted "
        "on val (RUN/calibration.json). `prob` and `predict`'s `probability` are the calibrated "
        f"risk; the raw output is kept as `prob_raw`. On {split} ({num(cal['prevalence'])} "
        "positive), with 95% bootstrap CIs:",
        "",
        *table(["figure", "raw", "calibrated"], rows),
        "",
        "The table below is of the calibrated probability (figures/reliability_*.png shows both):",
        "",
    ]


# --------------------------------------------------------------------------- subgroups
def subgroup_section(metrics: Mapping[str, Mapping[str, Any] | None], run: str) -> list[str]:
    split = "test" if metrics.get("test") else "val" if metrics.get("val") else None
    lines = [
        "## Subgroups (factors)",
        "",
        "Factors reported apart, from the DICOM headers: view (AP films are mostly portable, "
        "of sicker patients, and look different), sex and age band. Not available in the data, "
        "so not reported: ethnicity, hospital, scanner, clinical setting.",
        "",
    ]
    rows = (metrics[split] or {}).get("subgroups", []) if split else []
    names = [r["threshold_name"] for r in rows]
    name = next((t for t in SUBGROUP_THRESHOLDS if t in names), names[0] if names else None)
    if name is None:
        cmd = f"python -m pneumolib evaluate --run {run} --split test"
        return lines + [not_measured("no subgroup rows", cmd), ""]
    rows = [r for r in rows if r["threshold_name"] == name]
    lines += [
        f"On {split}, with sensitivity and specificity at the `{name}` threshold chosen on val "
        f"({num(rows[0]['threshold'])}). Small groups have wide intervals; a group with one "
        "class has no AUC (n/a).",
        "",
    ]
    body = [
        [r["variable"], r["group"], r["n"], r["n_pos"]]
        + [with_ci(r.get(k), [r.get(f"{k}_lo"), r.get(f"{k}_hi")]) for k in _SUB]
        for r in rows
    ]
    header = ["factor", "group", "patients", "positive"] + [f"{k} [95% CI]" for k in _SUB.values()]
    return lines + table(header, body) + [""]


_SUB = {"roc_auc": "ROC AUC", "sensitivity": "sensitivity", "specificity": "specificity"}


# --------------------------------------------------------------------------- localisation
def localisation_section(summaries: Sequence[Mapping[str, Any]], run: str) -> list[str]:
    lines = ["## Localisation against the expert boxes", ""]
    if not summaries:
        cmd = f"python -m pneumolib cam --run {run} --split test"
        return lines + [not_measured("no cam_<split>.json", cmd), ""]
    lines += [
        "Class-activation maps of the true positives (label positive, probability at or above "
        "the threshold given) scored against the radiologists' boxes: the pointing game (the "
        "map's peak inside a box) and the energy in the boxes, each against its chance level, "
        "the share of the image the boxes cover. A high AUC with maps off the boxes means the "
        "model scores something other than the opacity. From cam_<split>.json.",
        "",
    ]
    rows = []
    for s in summaries:
        rows.append(
            [s["file"], s.get("method", "?"), s.get("layer", "?"), num(s.get("threshold")), s["n"]]
            + [with_ci(s.get(k), [s.get(f"{k}_ci_low"), s.get(f"{k}_ci_high")]) for k in _LOC]
        )
    header = ["file", "method", "layer", "threshold", "true positives"]
    header += ["pointing game [95% CI]", "energy in box [95% CI]", "chance (box area) [95% CI]"]
    return lines + table(header, rows) + [""] + _box_lines(summaries)


def _box_lines(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per cam summary with boxes: the challenge's score of the boxes from the maps."""
    lines = []
    for s in summaries:
        block = s.get("rsna_map")
        if not isinstance(block, Mapping):
            continue
        rule = s.get("box_rule") or {}
        lines.append(
            f"- Boxes from the maps ({s['file']}, every patient of the split, by the rule "
            f"fitted on val: {rule.get('method', '?')} on {rule.get('layer', '?')}): the "
            f"challenge's score (mean over images of TP / (TP + FP + FN) over IoU 0.40-0.75) "
            f"{with_ci(block.get('value'), block.get('ci'))} over {block.get('n_images')} images."
        )
    return lines + [""] if lines else []


_LOC = ("pointing_hit", "energy_in_box", "box_area_fraction")


# --------------------------------------------------------------------------- prose
