"""`evaluate` on a detector run: its boxes for every patient of a split, scored as the
challenge scores them, with the image-level ROC AUC the run-folder contract asks for.

Files: RUN/boxes_<split>.csv (Kaggle's `patientId, PredictionString`, every patient of the
split, boxes at or above the confidence cut chosen on val (`val_box_threshold` of the
checkpoint's epoch), in the original image's pixels) and RUN/metrics_<split>.json: `rsna_map`
{value, ci, n_images}, `rsna_map_by_view` (AP, PA), the ranking and threshold metrics of each
image's top box confidence (`roc_auc`, `average_precision`, ... as a classifier's file has them;
the threshold `box_cut` calls an image positive when it keeps a box), `box_threshold`, `kind`.

With `gate` (a classifier run), an image keeps its boxes only where the classifier's calibrated
probability reaches its val-chosen operating point; the file then also holds `rsna_map_gated`,
`gate_difference` (gated - ungated, paired bootstrap over the same patients) and `gate`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pneumolib.base.config import Config
from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.metrics import jsonable, summarize
from pneumolib.base.rundir import (
    best_path,
    boxes_path,
    file_sha256,
    predictions_path,
    read_predictions,
    split_metrics_path,
    trained_config,
)
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.loader import make_loader
from pneumolib.core.runtime import amp_dtype, resolve_device, warp_on_device
from pneumolib.data.labels import CacheStats, open_cache, original_sizes
from pneumolib.data.letterbox import boxes_to_original, truth_boxes
from pneumolib.detect.model import box_label, load_detector_checkpoint
from pneumolib.detect.score import above, split_boxes, top_confidence
from pneumolib.evaluate.boxes import BoxesScores, format_prediction_string, rsna_map
from pneumolib.evaluate.calibration import read_calibration
from pneumolib.evaluate.compare import rsna_map_difference

GATE_POINT = "youden"  # the gate's default operating point (submit's, too)


@dataclass(frozen=True)
class Detector:
    """A detector checkpoint ready to run: model (eval mode, on `device`), its Config, its
    cache's stats, the confidence cut chosen on val, and the file's identity."""

    model: nn.Module
    config: Config
    stats: CacheStats
    box_threshold: float
    device: torch.device
    path: Path
    sha256: str


def open_detector(checkpoint: str | Path, *, device: str = "auto") -> Detector:
    """A detector run's checkpoint (or its run folder: best.pt) -> `Detector`; a one-line
    UsageError where the checkpoint records no val-chosen box cut."""
    path = best_path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint)
    dev = resolve_device(device)
    model, cfg, stats, row = load_detector_checkpoint(path, map_location=dev)
    cut = row.get("val_box_threshold")
    if cut is None or not math.isfinite(float(cut)):
        raise UsageError(f"{path}: records no val_box_threshold; train it with `detect`")
    return Detector(model, cfg, stats, float(cut), dev, path, file_sha256(path))


def split_predictions(det: Detector, rows: pd.DataFrame) -> dict[str, BoxesScores]:
    """Every box the detector returns for the cache `rows` (uncut): {patientId: (boxes (k, 4)
    [x, y, w, h] cache pixels, confidences (k,))}."""
    cfg = det.config
    on_device = warp_on_device(det.device, gpu_augment=cfg.gpu_augment)
    loader = make_loader(
        cfg.cache, rows, batch_size=cfg.eval_batch_size, out_size=cfg.image_size,
        policy=AugmentPolicy.from_config(cfg), train=False, seed=cfg.seed, workers=cfg.workers,
        warp_in_worker=False, pin_memory=det.device.type == "cuda",
    )  # fmt: skip
    found = split_boxes(
        det.model, loader, ids=list(rows["patientId"].astype(str)), boxes=list(rows["boxes"]),
        device=det.device, size=cfg.image_size, cache_size=det.stats.size, label=box_label(),
        amp=amp_dtype(det.device, cfg.amp), on_device=on_device,
    )  # fmt: skip
    return found.predictions


def gate_keeps(
    gate: str | Path, split: str, ids: list[str], *, operating_point: str = GATE_POINT
) -> tuple[set[str], dict[str, Any]]:
    """(the patients of `ids` classifier run `gate` calls positive at its val-chosen
    `operating_point`, a description). Reads GATE/predictions_<split>.csv (calibrated `prob`)
    and GATE/calibration.json, made first by the classifier's `evaluate` where missing."""
    if trained_config(gate).config.kind != "classifier":
        raise UsageError(f"--gate {gate}: not a classifier run; the gate is a classifier")
    path = predictions_path(gate, split)
    have = path.is_file() and read_calibration(gate) is not None
    if not have or not set(ids) <= set(read_predictions(gate, split)["patientId"].astype(str)):
        from pneumolib.evaluate.run import evaluate_run

        evaluate_run(gate, split, figures=False, print_table=False)
    pred = read_predictions(gate, split)
    probs = dict(zip(pred["patientId"].astype(str), pred["prob"], strict=True))
    missing = [p for p in ids if p not in probs]
    if missing:
        raise UsageError(f"{path}: lacks patient {missing[0]} of this split; gate with a run "
                         "of the detector's cache")  # fmt: skip
    cal = read_calibration(gate)
    assert cal is not None  # evaluate_run wrote it
    threshold = cal.threshold(operating_point)
    keep = {p for p in ids if probs[p] >= threshold}
    info = {"run": str(gate), "operating_point": operating_point, "threshold": threshold,
            "n_kept": len(keep), "n": len(ids)}  # fmt: skip
    return keep, info


def _write_boxes(path: Path, boxes: dict[str, BoxesScores]) -> None:
    table = pd.DataFrame(
        [(pid, format_prediction_string(*v)) for pid, v in boxes.items()],
        columns=["patientId", "PredictionString"],
    )
    atomic_write(path, lambda p: table.to_csv(p, index=False))


def _by_view(rows: pd.DataFrame, truth: dict, boxes: dict, n_boot: int, seed: int) -> dict:
    out = {}
    for view in sorted(rows["view"].dropna().astype(str).unique()) if "view" in rows else []:
        ids = rows.loc[rows["view"].astype(str) == view, "patientId"].astype(str)
        out[view] = rsna_map({p: truth[p] for p in ids}, {p: boxes[p] for p in ids},
                             n_boot=n_boot, seed=seed)  # fmt: skip
    return out


def evaluate_detector(
    run: str | Path, split: str, *, gate: str | Path | None = None, n_boot: int = 1000,
    seed: int = 0, device: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Score detector run `run` on `split` of its cache: write RUN/boxes_<split>.csv and
    RUN/metrics_<split>.json (module docstring) and return the metrics."""
    if split not in ("val", "test"):
        raise UsageError(f"split: expected 'val' or 'test', got {split!r}")
    det = open_detector(run, device=device)
    index, _ = open_cache(det.config.cache)
    rows = index[index["split"] == split].reset_index(drop=True)
    ids = list(rows["patientId"].astype(str))
    found = split_predictions(det, rows)
    heights, widths, note = original_sizes(rows, where=Path(det.config.cache) / "index.csv")
    if note:
        print(note, file=sys.stderr)
    size = det.stats.size
    boxes = {
        pid: (boxes_to_original(b, height=int(h), width=int(w), size=size), s)
        for pid, (b, s), h, w in zip(ids, (above(found, det.box_threshold)[p] for p in ids),
                                     heights, widths, strict=True)
    }  # fmt: skip
    truth = truth_boxes(rows, cache_size=size, heights=heights, widths=widths)
    _write_boxes(boxes_path(run, split), boxes)
    pred = rows.drop(columns=["boxes"]).assign(prob=top_confidence(found, ids))
    metrics: dict[str, Any] = {"split": split, "kind": "detector", "threshold_source": "val"}
    metrics |= summarize(pred, thresholds={"box_cut": det.box_threshold}, n_boot=n_boot, seed=seed)
    metrics |= {
        "rsna_map": rsna_map(truth, boxes, n_boot=n_boot, seed=seed),
        "rsna_map_by_view": _by_view(rows, truth, boxes, n_boot, seed),
        "box_threshold": det.box_threshold,
        "boxes": boxes_path(run, split).name,
        "cache": str(det.config.cache),
        "checkpoint": {"path": str(det.path), "sha256": det.sha256},
    }
    if gate is not None:
        keep, metrics["gate"] = gate_keeps(gate, split, ids)
        empty: BoxesScores = (np.zeros((0, 4)), np.zeros(0))
        gated = {p: v if p in keep else empty for p, v in boxes.items()}
        metrics["rsna_map_gated"] = rsna_map(truth, gated, n_boot=n_boot, seed=seed)
        metrics["gate_difference"] = rsna_map_difference(truth, gated, boxes, n_boot=n_boot,
                                                         seed=seed)  # fmt: skip
    atomic_write(split_metrics_path(run, split),
                 json.dumps(jsonable(metrics), indent=2, allow_nan=False))  # fmt: skip
    print(_summary_line(metrics, run))
    return jsonable(metrics)


def _summary_line(m: dict[str, Any], run: str | Path) -> str:
    def block(b: dict) -> str:
        lo, hi = b["ci"]
        return f"{b['value']:.3f} [{lo:.3f}, {hi:.3f}] on {b['n_images']} images"

    line = (f"{m['split']}: rsna_map {block(m['rsna_map'])} (box cut {m['box_threshold']:.2f}), "
            f"image AUC {m['roc_auc']:.3f}")  # fmt: skip
    if "rsna_map_gated" in m:
        d = m["gate_difference"]
        line += (f"; gated {block(m['rsna_map_gated'])}, difference {d['value']:+.3f} "
                 f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")  # fmt: skip
    return line + f" -> {boxes_path(run, m['split'])}, {split_metrics_path(run, m['split'])}"
