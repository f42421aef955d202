"""Reading a model card back: its sections, tables and numbers, each checked against the run's
own files (used by tests/evaluate/test_card.py and tests/course/test_demo.py)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pneumolib.base.rundir import CARD
from pneumolib.data.labels import read_index

BOLD_SYNTHETIC = "**Trained on synthetic data"


def sections(card: str) -> dict[str, str]:
    """'## Title' -> the text under it, up to the next '## '."""
    parts = re.split(r"^## ", card, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts}


def subsections(text: str) -> dict[str, str]:
    parts = re.split(r"^### ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts}


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `text` as a list of {header: cell} rows."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            head, *body = block
            found.append([dict(zip(head, row, strict=True)) for row in body[1:]])
            block = []
    return found


def nums(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell)]


def same(cell: str, value, ci=None) -> None:
    """The cell shows `value` (3 decimals) and, where defined, its CI `[lo, hi]`."""
    if value is None:
        assert cell == "n/a", cell
        return
    want = [value] + (list(ci) if ci is not None and None not in ci else [])
    assert nums(cell) == pytest.approx(want, abs=5.1e-4), (cell, want)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def check_card_against_run(run: Path) -> str:
    """Assert that each number on RUN/MODEL_CARD.md equals the one in the run's files (and its
    cache's); returns the card. Reusable by any test that makes a run and its card."""
    card = (Path(run) / CARD).read_text()
    sec = sections(card)
    cfg = json.loads((run / "config.json").read_text())
    cache = Path(cfg["cache"])
    stats = _json(cache / "stats.json")
    assert card.startswith(f"# Model card: {run.name}\n")
    assert (BOLD_SYNTHETIC in card) == bool(stats and stats.get("synthetic"))

    details = {r["field"]: r["value"] for r in tables(sec["Model details"])[0]}
    if (run / "metrics.csv").is_file():
        hist = pd.read_csv(run / "metrics.csv")
        assert nums(details["training time"])[0] == pytest.approx(hist["seconds"].sum(), abs=0.051)
        assert details["epochs"] == f"{len(hist)} trained of {cfg['epochs']} planned"
    if (run / "best.pt").is_file():
        sha = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
        assert details["checkpoint"] == f"best.pt, sha256 `{sha}`"
    assert float(details["learning rate"]) == cfg["lr"]
    assert int(details["batch size"]) == cfg["batch_size"] and int(details["seed"]) == cfg["seed"]
    assert details["input size"].startswith(f"{cfg['image_size']} px")

    if stats is not None:
        index = read_index(cache)
        rows = {r["split"]: r for r in tables(sec["Training and evaluation data"])[0]}
        for split, part in [*index.groupby("split"), ("all", index)]:
            r = rows[split]
            assert int(r["patients"]) == len(part) and int(r["positive"]) == part.target.sum()
            same(r["prevalence"], part.target.mean())
            ap, pa = part[part.view == "AP"], part[part.view == "PA"]
            assert (int(r["AP films"]), int(r["PA films"])) == (len(ap), len(pa))
            same(r["prevalence on AP"], ap.target.mean() if len(ap) else None)
            same(r["prevalence on PA"], pa.target.mean() if len(pa) else None)

    metrics = {s: _json(run / f"metrics_{s}.json") for s in ("val", "test")}
    if any(metrics.values()):
        _check_metrics(sec, metrics)
    for path in sorted(run.glob("cam_*.json")):
        s = _json(path)
        shown = tables(sec["Localisation against the expert boxes"])[0]
        row = next(r for r in shown if r["file"] == path.name)
        assert int(row["true positives"]) == s["n"]
        for key, col in [
            ("pointing_hit", "pointing game [95% CI]"),
            ("energy_in_box", "energy in box [95% CI]"),
            ("box_area_fraction", "chance (box area) [95% CI]"),
        ]:
            same(row[col], s[key], [s[f"{key}_ci_low"], s[f"{key}_ci_high"]])
    return card


def _check_metrics(sec: dict[str, str], metrics: dict[str, dict | None]) -> None:
    ranking = {r["split"]: r for r in tables(sec["Metrics"])[0]}
    subs = subsections(sec["Metrics"])
    for split, m in metrics.items():
        if m is None:
            assert f"no metrics_{split}.json" in sec["Metrics"]
            continue
        r = ranking[split]
        assert (int(r["patients"]), int(r["positive"])) == (m["n"], m["n_pos"])
        same(r["ROC AUC [95% CI]"], m["roc_auc"], m["roc_auc_ci"])
        same(r["average precision [95% CI]"], m["average_precision"], m["average_precision_ci"])
        same(r["Brier [95% CI]"], m["brier"], m["brier_ci"])
        same(r["ECE"], m["ece"])
        rows = {t["threshold"]: t for t in tables(subs[f"{split} (thresholds chosen on val)"])[0]}
        assert list(rows) == list(m["thresholds"])
        for name, t in m["thresholds"].items():
            same(rows[name]["value"], t["threshold"])
            for rate in ("accuracy", "precision", "recall", "specificity", "f1"):
                same(rows[name][f"{rate} [95% CI]"], t[rate], t["ci"][rate])
    split = "test" if metrics["test"] else "val"
    m = metrics[split]
    bins = [b for b in m["reliability"] if b["count"]]
    found = tables(sec["Calibration"])
    cal = m.get("calibration")
    if cal is None:  # evaluated before calibration: one sentence, then the bins
        same(re.search(r"expected calibration error (\S+),", sec["Calibration"])[1], m["ece"])
    else:  # raw and calibrated side by side, then the bins of the calibrated probability
        figures = {r["figure"]: r for r in found.pop(0)}
        for key, name in (("ece", "expected calibration error"), ("brier", "Brier score")):
            for when in ("raw", "calibrated"):
                same(figures[name][when], cal[when][key], cal[when][f"{key}_ci"])
        for when in ("raw", "calibrated"):
            same(figures["mean probability"][when], cal[when]["mean_prob"])
        assert cal["calibrated"]["ece"] == pytest.approx(m["ece"])  # `prob` is calibrated
    shown = found[0]
    assert [int(r["patients"]) for r in shown] == [b["count"] for b in bins]
    for r, b in zip(shown, bins, strict=True):
        same(r["mean predicted"], b["mean_pred"])
        same(r["observed positive"], b["observed"])
    name = re.search(r"at the `([^`]+)` threshold", sec["Subgroups (factors)"])[1]
    shown = {(r["factor"], r["group"]): r for r in tables(sec["Subgroups (factors)"])[0]}
    rows = [g for g in m["subgroups"] if g["threshold_name"] == name]
    assert len(shown) == len(rows) > 0
    for g in rows:
        r = shown[(g["variable"], g["group"])]
        assert (int(r["patients"]), int(r["positive"])) == (g["n"], g["n_pos"])
        for key, col in [("roc_auc", "ROC AUC"), ("sensitivity", "sensitivity")]:
            same(r[f"{col} [95% CI]"], g[key], [g[f"{key}_lo"], g[f"{key}_hi"]])
        same(
            r["specificity [95% CI]"], g["specificity"], [g["specificity_lo"], g["specificity_hi"]]
        )


# --------------------------------------------------------------------------- a run's files
