"""The demo's report.md: every result of `python -m pneumolib demo`, each with a sentence that
says what it shows on this data. Every number is read from what the stages returned or wrote;
none is typed in."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pneumolib.base.config import Config
from pneumolib.base.fmt import interval, with_ci
from pneumolib.base.rundir import CARD, figures_dir, predictions_path
from pneumolib.cam.localisation import localisation_table
from pneumolib.data.provenance import read_truth
from pneumolib.evaluate.run import metrics_table
from pneumolib.evaluate.sentences import best_epoch_sentence, calibration_sentence
from pneumolib.train.best_epoch import best_epoch_index
from pneumolib.tune import seed_agreement, seed_verdict


def _f(x: Any) -> str:
    """3 decimals for numbers; "–" for undefined ones (e.g. precision with no positive call)."""
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def data_section(cfg: Config) -> list[str]:
    """What the phantoms hold and why the task is hard (from `demo_truth.csv`)."""
    t = read_truth(cfg.raw)
    pos = t[t.label == 1]
    n_missed, n_over = (t.label_noise == "missed").sum(), (t.label_noise == "overcalled").sum()
    n_over_mimic = ((t.label_noise == "overcalled") & (t.mimic != "")).sum()
    by_view = t.groupby("view").label.mean()
    return [
        "## The data",
        "",
        f"`{cfg.raw}` -> cache `{cfg.cache}` ({cfg.cache_size} px). "
        f"{len(t)} synthetic patients ({len(pos)} labelled positive; AP films "
        f"{(t.view == 'AP').mean():.0%} of all, positive {by_view.get('AP', 0):.0%} of the time "
        f"against {by_view.get('PA', 0):.0%} for PA). Realism 'rsna' makes the task hard for the "
        f"reasons RSNA is: {int(t.faint.sum())} positives have faint and {int(t.small.sum())} "
        f"small opacities, {int((t.mimic != '').sum())} negatives carry an opacity-like band or "
        f"overlap, AP films are lower in contrast and noisier, and {n_missed + n_over} labels "
        f"disagree with their image ({n_missed} opacities called negative, {n_over} negatives "
        f"called positive, {n_over_mimic} of them on a mimic), about as often as RSNA's readers "
        "disagreed. No model can reach AUC 1 here.",
        "",
    ]


def training_section(cfg: Config, summary: Mapping[str, Any]) -> list[str]:
    hist = summary["history"]
    lines = [
        "## Training",
        "",
        f"{cfg.model}, {cfg.mode}, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g}, "
        f"{cfg.image_size} px.",
    ]
    if best_epoch_index(hist, cfg.monitor) is not None:
        lines.append(
            best_epoch_sentence(hist, cfg.monitor)
            + " More epochs do not make this data easy (figures/curves.png)."
        )
    return [*lines, ""]


def test_section(metrics: Mapping[str, Any], run: Path) -> list[str]:
    test = metrics["test"]
    thr = {k: v["threshold"] for k, v in test["thresholds"].items()}
    auc_ci = interval(test.get("roc_auc_ci"), missing="–")
    ap_ci = interval(test.get("average_precision_ci"), missing="–")
    lines = [
        "## Test split (thresholds chosen on val, applied unchanged)",
        "",
        f"ROC AUC {_f(test['roc_auc'])} {auc_ci}, average precision "
        f"{_f(test['average_precision'])} {ap_ci} on "
        f"{test['n']} patients ({test['n_pos']} positive). The ROC curve bends "
        "(figures/roc_test.png): some positives score below some negatives, as on real films.",
        "",
        "```",
        metrics_table(test).to_string(),
        "```",
        "",
        "The thresholds chosen on val differ ("
        + ", ".join(f"{k} {v:.3f}" for k, v in thr.items())
        + "): each buys recall with precision at another rate, and none is right for every use.",
        "",
        calibration_sentence(test),
        "",
    ]
    return lines


def view_section(metrics: Mapping[str, Any]) -> list[str]:
    """AP and PA reported apart: the confound a model can lean on."""
    rows = [
        r
        for r in metrics["test"].get("subgroups", [])
        if r["variable"] == "view" and r["threshold_name"] == "0.5"
    ]
    lines = ["## AP and PA apart (test)", "", "| view | n | positive | ROC AUC | 95% CI |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for r in rows:
        ci = interval([r.get("roc_auc_lo"), r.get("roc_auc_hi")], missing="–")
        lines.append(f"| {r['group']} | {r['n']} | {r['n_pos']} | {_f(r.get('roc_auc'))} | {ci} |")
    auc = {r["group"]: r.get("roc_auc") for r in rows}
    lines += [
        "",
        "AP films are more often positive and look different (portable: flatter, noisier, a "
        "larger heart), so part of what a model scores is the view. Within a view that cue is "
        f"gone: AUC {_f(auc.get('AP'))} on AP films and {_f(auc.get('PA'))} on PA films, each "
        "on few positives (see the intervals).",
        "",
    ]
    return lines


def mistakes_section(run: Path, raw: str) -> list[str]:
    """The most confident test mistakes at 0.5, and how many are label noise."""
    pred = pd.read_csv(predictions_path(run, "test"), dtype={"patientId": str})
    pred = pred.merge(read_truth(raw).drop(columns="view"), on="patientId", how="left")
    wrong = pred[(pred.prob >= 0.5) != (pred.target == 1)]
    if wrong.empty:
        return ["## Most confident mistakes", "", "No mistakes at threshold 0.5.", ""]
    top = wrong.assign(conf=(wrong.prob - 0.5).abs()).nlargest(5, "conf")
    kinds = {
        "label noise": top.label_noise != "",
        "faint": (top.label_noise == "") & top.faint.astype(bool),
        "small": (top.label_noise == "") & ~top.faint.astype(bool) & top.small.astype(bool),
        "on a mimic": (top.label_noise == "") & (top.mimic != ""),
    }
    counts = ", ".join(f"{int(v.sum())} {k}" for k, v in kinds.items())
    plain = len(top) - int(sum(v for v in kinds.values()).clip(0, 1).sum())
    table = top[["patientId", "prob", "target", "view", "label_noise", "faint", "small", "mimic"]]
    return [
        "## Most confident mistakes (test, threshold 0.5)",
        "",
        "```",
        table.to_string(index=False),
        "```",
        "",
        f"Of these {len(top)} (from `demo_truth.csv`): {counts}, {plain} with none of these. "
        "Label noise means the image and its label disagree: the model may be right. On real "
        "data the same check is a second reader.",
        "",
    ]


def cam_section(loc: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["## Where the network looks (Grad-CAM layer2, true positives)", ""]
    lines += ["```", localisation_table(dict(loc)).to_string(), "```", ""]
    if not all(s["n"] for s in loc.values()):
        lines += ["A split without true positives has nothing to score (NaN): the model called"]
        lines += [
            "no positive there at 0.5. `--quick` trains too briefly; the full demo learns.",
            "",
        ]
        return lines
    test = loc["test"]
    lines += [
        f"On test the peak lands in an expert box for {test['pointing_hit']:.0%} of the true "
        f"positives against a chance of {test['box_area_fraction']:.0%} (the share of the image "
        "the boxes cover): well above chance, below 1, as faint and small opacities give the "
        "network less to point at.",
        "",
    ]
    return lines + _box_lines(test)


def _box_lines(summary: Mapping[str, Any]) -> list[str]:
    """The challenge's score of the boxes made from the maps (`cam.boxes`), where cam made them."""
    score = summary.get("rsna_map")
    if not score:
        return []
    rule = summary.get("box_rule") or {}
    return [
        f"Boxes from the maps, scored as Kaggle scores the challenge (mean over IoU 0.40-0.75 "
        f"of TP / (TP + FP + FN)): {with_ci(score['value'], score['ci'])} on test over "
        f"{score['n_images']} images, with the rule chosen on val "
        f"({rule.get('method', 'cam')}, {rule.get('layer') or 'last layer'}).",
        "",
    ]


def card_section(run: Path, out: Path) -> list[str]:
    """A link to the run's model card and the line it opens with (`pneumolib.evaluate.card`)."""
    card = run / CARD
    if not card.is_file():
        return ["## Model card", "", f"Not written: `python -m pneumolib card --run {run}`.", ""]
    first = next((ln for ln in card.read_text().splitlines() if ln.startswith("**")), "")
    return [
        "## Model card",
        "",
        f"[{card.relative_to(out)}]({card.relative_to(out)}): the run's model, intended use, "
        "data, metrics with CIs, calibration, subgroups, localisation and caveats, every "
        "figure read from the run's files.",
        *(["", f"> {first}"] if first else []),
        "",
    ]


def sweep_section(tables: Mapping[int, pd.DataFrame]) -> list[str]:
    agree = seed_agreement(tables)
    pts = agree["points"]
    shown = pts[["mean", "std", "min", "max"]].round(3).to_string()
    verdict = seed_verdict(agree) + (
        " At this budget the grid cannot pick a setting; notebook 06 shows what a real sweep "
        "needs (more epochs, more data, repeated seeds)."
        if agree["within_noise"]
        else ""
    )
    return [
        "## Sweep: val AUC per grid point over seeds",
        "",
        "```",
        shown,
        "```",
        "",
        verdict,
        "",
    ]


def write_report(cfg, *, summary, metrics, loc, tables, times, out: Path) -> str:
    """report.md's text from the demo's results (see `pneumolib.course.demo.run_demo`)."""
    run = Path(cfg.out)
    lines = [
        "# pneumolib demo report",
        "",
        "Synthetic phantoms made by `pneumolib.data.synth`: these numbers show what a study on",
        "real radiographs looks like, not how well a model detects pneumonia on them.",
        "",
    ]
    lines += data_section(cfg)
    lines += training_section(cfg, summary)
    lines += test_section(metrics, run)
    lines += view_section(metrics)
    lines += mistakes_section(run, cfg.raw)
    lines += cam_section(loc)
    lines += card_section(run, out)
    lines += sweep_section(tables)
    lines += ["## Seconds per step", ""] + [f"- {k}: {v:.1f}" for k, v in times.items()]
    figs = ", ".join(str(p.relative_to(out)) for p in sorted(figures_dir(run).glob("*.png")))
    lines += ["", f"Figures: {figs}", "Sweep heat map (mean over seeds): sweep/heatmap.png", ""]
    return "\n".join(lines)
