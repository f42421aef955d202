"""`cam`'s boxes for a run: the rule fitted on val (once per checkpoint and calibration), applied
unchanged to the split, written as Kaggle's file and scored by the challenge's metric.

`BoxPlan.start` reads RUN/box_rule.json, or fits it on val (`boxes.fit_box_rule`: one pass per
(method, layer) of `boxes.map_sources`); `watch` collects the split's components from the
pass `cam_run` makes anyway when it uses the rule's method and layer; `finish` makes the
rest (another pass where needed), writes RUN/boxes_<split>.csv (every patient of the split,
original pixels) and returns the `rsna_map` block of the summary. Confidences use the
calibrated probability of RUN/calibration.json (`evaluate.calibration`), as
predictions_<split>.csv holds it; without a calibration for this checkpoint, the raw one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import boxes_path, calibration_path, file_sha256
from pneumolib.cam.boxes import (
    BoxRule,
    MapCollector,
    SplitMaps,
    boxes_table,
    fit_box_rule,
    map_sources,
    read_box_rule,
    rule_boxes,
    write_box_rule,
)
from pneumolib.cam.maps import default_layer, resolve_layer
from pneumolib.core.checkpoint import Run
from pneumolib.data.letterbox import truth_boxes
from pneumolib.evaluate.boxes import rsna_map
from pneumolib.evaluate.calibration import Calibration, raw_logits, read_calibration

# (rows, method=, layer=, desc=) -> batches of `run.iter_cam_batches` for the pneumonia logit
MakeBatches = Callable[..., Iterable[dict[str, Any]]]


def box_calibration(run: Path, sha256: str) -> tuple[Calibration | None, str | None, str | None]:
    """(the calibration to apply, its file's sha256, a note line) for the boxes' confidences:
    RUN/calibration.json when it was fitted on this checkpoint for one logit, else None and a
    note saying the raw probability is used and why."""
    cal, path = read_calibration(run), calibration_path(run)
    why = None
    if cal is None:
        why = f"{path} not found"
    elif cal.checkpoint_sha256 != sha256:
        why = f"{path} was fitted on another checkpoint"
    elif len(cal.shift) != 1:
        why = "a three-class run's calibration needs every logit"
    if why is None:
        return cal, file_sha256(path), None
    note = f"note: box confidences use the raw probability ({why})"
    if cal is None or len(cal.shift) == 1:
        note += f"; `python -m pneumolib evaluate --run {run}` fits the calibration"
    return None, None, note


def calibrated(cal: Calibration | None, probs: np.ndarray) -> np.ndarray:
    """Raw P(pneumonia) (B,) of a one-logit run -> calibrated (B,) (unchanged without `cal`)."""
    p = np.asarray(probs, dtype=np.float64)
    return p if cal is None else cal.pneumonia(raw_logits(p[:, None]))


class BoxPlan:
    """The boxes of one `cam_run` (see the module docstring)."""

    def __init__(
        self,
        loaded: Run,
        *,
        rows: pd.DataFrame,
        sizes: pd.DataFrame,
        make_batches: MakeBatches,
        cache_size: int,
    ) -> None:
        self.loaded, self.rows, self.sizes = loaded, rows, sizes
        self.make_batches, self.cache_size = make_batches, cache_size
        self.cal, cal_sha, note = box_calibration(loaded.folder, loaded.sha256)
        if note:
            print(note)
        self.identity = {"checkpoint_sha256": loaded.sha256, "calibration_sha256": cal_sha}
        self.rule = BoxRule()
        self.maps: SplitMaps | None = None  # the split's, when the fit on val made them
        self.watched: MapCollector | None = None  # the split's, collected from cam's own pass

    def _layer(self, layer: str | None) -> str:
        model = self.loaded.model
        return resolve_layer(model, layer) or default_layer(model)

    def _collect(self, batches: Iterable[dict[str, Any]], into: MapCollector) -> Iterator[dict]:
        for b in batches:
            ids = b["rows"]["patientId"].astype(str).to_numpy()
            sizes = self.sizes.loc[ids, ["height", "width"]].to_numpy()
            into.add(ids, b["maps"], calibrated(self.cal, b["probs"]), sizes=sizes)
            yield b

    def _pass(self, rows: pd.DataFrame, *, method: str, layer: str, desc: str) -> SplitMaps:
        collector = MapCollector(map_size=self.loaded.config.image_size, cache_size=self.cache_size)
        batches = self.make_batches(rows, method=method, layer=layer, desc=desc)
        for _ in self._collect(batches, collector):
            pass
        return collector.maps

    def start(self, val_rows: pd.DataFrame, *, split: str) -> BoxPlan:
        """Read RUN/box_rule.json, or fit it on `val_rows` and write it; returns self."""
        run = self.loaded.folder
        rule = read_box_rule(run, identity=self.identity)
        if rule is not None:
            self.rule = rule
            print(f"boxes: the rule fitted on val ({run / 'box_rule.json'}): {_describe(rule)}")
            return self
        family = str(getattr(self.loaded.model, "family", ""))
        found: dict[tuple[str, str | None], SplitMaps] = {}
        for method, layer in map_sources(family):
            name = self._layer(layer)
            desc = f"boxes: {method} {name} val"
            found[(method, name)] = self._pass(val_rows, method=method, layer=name, desc=desc)
        truth = self._truth(val_rows)
        self.rule, table = fit_box_rule(found, truth)
        best = table.iloc[int(table["rsna_map"].fillna(-1.0).to_numpy().argmax())]
        record = {
            **self.identity,
            "val_rsna_map": None if pd.isna(best["rsna_map"]) else float(best["rsna_map"]),
            "val_n_images": int(best["n_images"]),
            "n_rules": len(table),
        }
        path = write_box_rule(run, self.rule, record=record)
        print(
            f"boxes: rule fitted on val, {len(table)} tried: {_describe(self.rule)}; val "
            f"rsna_map {record['val_rsna_map']} -> {path}"
        )
        if split == "val":
            self.maps = found[(self.rule.method, self._layer(self.rule.layer))]
        return self

    def _truth(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        ids = rows["patientId"].astype(str).to_numpy()
        sizes = self.sizes.loc[ids]
        return truth_boxes(
            rows,
            cache_size=self.cache_size,
            heights=sizes["height"].to_numpy(),
            widths=sizes["width"].to_numpy(),
        )

    def watch(
        self, batches: Iterable[dict[str, Any]], *, method: str, layer: str | None, target: str
    ) -> Iterable[dict[str, Any]]:
        """`batches` of the split, passed through; collected on the way when they are maps of
        the rule's method and layer for the pneumonia logit (saving `finish` a pass)."""
        same = (method, self._layer(layer)) == (self.rule.method, self._layer(self.rule.layer))
        if self.maps is not None or not same or target != "pneumonia":
            return batches
        collector = MapCollector(map_size=self.loaded.config.image_size, cache_size=self.cache_size)
        self.watched = collector
        return self._collect(batches, collector)

    def finish(self, split: str, *, n_boot: int, seed: int) -> dict[str, Any]:
        """Write RUN/boxes_<split>.csv for every patient of the split -> the summary's
        `rsna_map` {value, ci, n_images} and `box_rule` (the rule's fields)."""
        maps, watched = self.maps, self.watched
        if maps is None and watched is not None and len(watched.maps.ids) == len(self.rows):
            maps = watched.maps
        if maps is None:
            layer = self._layer(self.rule.layer)
            desc = f"boxes: {self.rule.method} {layer} {split}"
            maps = self._pass(self.rows, method=self.rule.method, layer=layer, desc=desc)
        predictions = rule_boxes(maps, self.rule)
        order = self.rows["patientId"].astype(str).tolist()  # the index's order
        predictions = {pid: predictions[pid] for pid in order}
        path = boxes_path(self.loaded.folder, split)
        table = boxes_table(predictions)
        atomic_write(path, lambda p: table.to_csv(p, index=False))
        metric = rsna_map(self._truth(self.rows), predictions, n_boot=n_boot, seed=seed)
        lo, hi = metric["ci"]
        print(
            f"boxes {split}: rsna_map {metric['value']:.3f} [{lo:.3f}, {hi:.3f}] on "
            f"{metric['n_images']} images -> {path}"
        )
        block = {  # NaN (no image counts, or no bootstrap) is not JSON: null
            "value": _plain(metric["value"]),
            "ci": [_plain(v) for v in metric["ci"]],
            "n_images": metric["n_images"],
        }
        return {"rsna_map": block, "box_rule": asdict(self.rule)}


def _plain(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def _describe(rule: BoxRule) -> str:
    return (
        f"{rule.method} {rule.layer or 'default layer'}, threshold {rule.rel_threshold:g} of the "
        f"peak, min area {rule.min_area:g}, probability floor {rule.prob_floor:g}"
    )
