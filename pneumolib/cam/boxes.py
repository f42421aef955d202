"""Boxes from class activation maps, and the rule that makes them, fitted on val.

A map (h, w) in [0, 1] becomes boxes in four steps: keep the pixels at or above
`rel_threshold` x the map's peak; split them into connected components (8-connectivity,
`cv2.connectedComponentsWithStats`); drop components smaller than `min_area` (a fraction of the
image); keep the MAX_BOXES strongest (the challenge has one to four boxes a patient). Each box's
confidence is the image's calibrated probability times the component's strength (its peak map
value, 1 for the component holding the map's peak). An image whose probability is below
`prob_floor` gets no box. Boxes go from map pixels to cache pixels (the map covers the whole
cache image) and then to the original film's pixels by the cache's letterbox rule
(`data.letterbox.boxes_to_original`), clipped to the film.

`fit_box_rule` chooses the method and layer (`map_sources`) and the three numbers on val by
the challenge's metric (`evaluate.boxes`). A pass over a split keeps only each image's
components at every threshold of the grid (`MapCollector`), never the maps, so each (method,
layer) map is computed once per image and the cheap parameters are swept on what it left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from pneumolib.base.errors import RunError
from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import box_rule_path
from pneumolib.data.letterbox import boxes_to_original
from pneumolib.evaluate.boxes import BoxesScores, format_prediction_string, image_scores

REL_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # of the map's peak
MIN_AREAS = (0.002, 0.01, 0.03)  # fraction of the image a component must cover
PROB_FLOORS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # calibrated probability
MAX_BOXES = 4  # the challenge's patients have one to four boxes
# Earlier layers tried with Grad-CAM beside CAM on the pooled layer, per architecture family.
EARLIER_LAYERS = {"resnet": ("layer3", "layer2"), "densenet": ("features.denseblock3",)}
_EMPTY = np.zeros((0, 6))  # components: x, y, w, h (map pixels), area fraction, peak


@dataclass(frozen=True)
class BoxRule:
    """How maps become boxes (see the module docstring); stored in RUN/box_rule.json."""

    method: str = "cam"  # "cam" | "gradcam"
    layer: str | None = None  # dotted layer name; None: the layer the head pools
    rel_threshold: float = 0.5  # of the map's peak
    min_area: float = 0.01  # fraction of the image
    prob_floor: float = 0.5  # calibrated probability below which an image gets no box


@dataclass
class SplitMaps:
    """What a pass over a split leaves for the boxes: per image its id, calibrated probability,
    original size and its components (k, 6) at each threshold of REL_THRESHOLDS."""

    map_size: int  # side of the square maps (the network input)
    cache_size: int  # side of the square cache images the maps cover
    ids: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    components: dict[float, list[np.ndarray]] = field(
        default_factory=lambda: {t: [] for t in REL_THRESHOLDS}
    )


def map_sources(family: str) -> list[tuple[str, str | None]]:
    """The (method, layer) pairs the fit compares for a model `family`: CAM on the pooled layer
    and Grad-CAM on each of EARLIER_LAYERS (finer grids: an 8 px cell instead of 32 px)."""
    return [("cam", None)] + [("gradcam", name) for name in EARLIER_LAYERS.get(family, ())]


def components(cam_map: np.ndarray, *, rel_threshold: float) -> np.ndarray:
    """Connected components of `cam_map` (h, w) >= rel_threshold x its peak -> (k, 6): x, y, w,
    h (map pixels, a pixel's box is [i, i + 1)), area fraction of the map, peak map value."""
    peak = float(cam_map.max(initial=0.0))
    if not peak > 0:
        return _EMPTY
    mask = (cam_map >= rel_threshold * peak).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return _EMPTY
    peaks = ndimage.maximum(cam_map, labels, index=np.arange(1, n))
    area = stats[1:, cv2.CC_STAT_AREA] / cam_map.size
    return np.column_stack([stats[1:, :4].astype(np.float64), area, np.asarray(peaks)])


class MapCollector:
    """Collects, batch by batch, the components of every map at every threshold of the grid
    (`add`), and the batch's calibrated probabilities and original sizes."""

    def __init__(self, *, map_size: int, cache_size: int) -> None:
        self.maps = SplitMaps(map_size=map_size, cache_size=cache_size)

    def add(
        self, ids: Sequence[str], maps: np.ndarray, probs: np.ndarray, *, sizes: np.ndarray
    ) -> None:
        """One batch: `maps` (B, h, w) in [0, 1], calibrated `probs` (B,), original `sizes`
        (B, 2) as (height, width)."""
        m = self.maps
        m.ids += [str(i) for i in ids]
        m.probs += [float(p) for p in probs]
        m.heights += [int(h) for h in sizes[:, 0]]
        m.widths += [int(w) for w in sizes[:, 1]]
        for t in REL_THRESHOLDS:
            m.components[t] += [components(x, rel_threshold=t) for x in maps]


def _to_original(
    boxes: np.ndarray, *, scale: float, cache_size: int, height: int, width: int
) -> np.ndarray:
    """Boxes (m, 4) in map pixels -> the original film's pixels, clipped to the film."""
    orig = boxes_to_original(boxes * scale, height=height, width=width, size=cache_size)
    lo = np.clip(orig[:, :2], 0, [width, height])
    hi = np.clip(orig[:, :2] + orig[:, 2:], 0, [width, height])
    return np.column_stack([lo, hi - lo])


def rule_boxes(maps: SplitMaps, rule: BoxRule) -> dict[str, BoxesScores]:
    """{patientId: (boxes (m, 4) [x, y, w, h] in original pixels, confidences (m,))} of every
    image of `maps` under `rule` (m = 0 below the probability floor or with no component)."""
    out: dict[str, BoxesScores] = {}
    scale = maps.cache_size / maps.map_size
    for i, pid in enumerate(maps.ids):
        prob, found = maps.probs[i], maps.components[rule.rel_threshold][i]
        kept = found[found[:, 4] >= rule.min_area] if prob >= rule.prob_floor else _EMPTY
        kept = kept[np.argsort(-kept[:, 5], kind="stable")[:MAX_BOXES]]
        boxes = _to_original(
            kept[:, :4],
            scale=scale,
            cache_size=maps.cache_size,
            height=maps.heights[i],
            width=maps.widths[i],
        )
        out[pid] = (boxes, prob * kept[:, 5])
    return out


def boxes_table(predictions: Mapping[str, BoxesScores]) -> pd.DataFrame:
    """Kaggle's `patientId, PredictionString`, one row per patient (empty: no box)."""
    return pd.DataFrame(
        {
            "patientId": list(predictions),
            "PredictionString": [format_prediction_string(*v) for v in predictions.values()],
        }
    )


# --------------------------------------------------------------------------- the fit
def _grid_scores(
    maps: SplitMaps, truth: Mapping[str, Any], *, method: str, layer: str | None
) -> list[dict[str, Any]]:
    """The val score of every rule of the grid for one (method, layer): each (threshold, min
    area) scored once without a floor, the floors applied to the per-image scores."""
    has_truth = np.array([len(truth[pid]) > 0 for pid in maps.ids])
    no_box = np.where(has_truth, 0.0, np.nan)  # an image the floor leaves without boxes
    probs = np.asarray(maps.probs)
    sub = {pid: truth[pid] for pid in maps.ids}
    rows = []
    for t in REL_THRESHOLDS:
        for area in MIN_AREAS:
            rule = BoxRule(method, layer, t, area, 0.0)
            s = image_scores(sub, rule_boxes(maps, rule)).to_numpy()
            for floor in PROB_FLOORS:
                s_f = np.where(probs >= floor, s, no_box)
                n = int((~np.isnan(s_f)).sum())
                value = float(np.nanmean(s_f)) if n else float("nan")
                rows.append(asdict(rule) | {"prob_floor": floor, "rsna_map": value, "n_images": n})
    return rows


def fit_box_rule(
    found: Mapping[tuple[str, str | None], SplitMaps], truth: Mapping[str, Any]
) -> tuple[BoxRule, pd.DataFrame]:
    """The rule of the grid (each (method, layer) of `found` x REL_THRESHOLDS x MIN_AREAS x
    PROB_FLOORS) with the best challenge score on the val images of `found` against `truth`
    {patientId: boxes (n, 4) in original pixels}; ties go to the first in that order. Returns
    it and the table of every rule's `rsna_map` and `n_images`."""
    rows = []
    for (method, layer), maps in found.items():
        rows += _grid_scores(maps, truth, method=method, layer=layer)
    table = pd.DataFrame(rows)
    best = rows[int(table["rsna_map"].fillna(-1.0).to_numpy().argmax())]
    keys = BoxRule.__dataclass_fields__
    return BoxRule(**{k: v for k, v in best.items() if k in keys}), table


# --------------------------------------------------------------------------- the file
def write_box_rule(run: str | Path, rule: BoxRule, *, record: Mapping[str, Any]) -> Path:
    """RUN/box_rule.json: the rule and `record` (checkpoint_sha256, calibration, val score)."""
    path = box_rule_path(run)
    atomic_write(path, json.dumps({"rule": asdict(rule), **record}, indent=2))
    return path


def read_box_rule(run: str | Path, *, identity: Mapping[str, Any]) -> BoxRule | None:
    """RUN/box_rule.json's rule when it was fitted for `identity` (the checkpoint's sha256 and
    the calibration's), else None (missing, or fitted for another checkpoint or calibration).
    A damaged file is a one-line RunError."""
    path = box_rule_path(run)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        rule = BoxRule(**saved["rule"])
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(
            f"{path}: unreadable ({type(e).__name__}); delete it and run `python -m pneumolib "
            f"cam --run {Path(run)}` to fit it again"
        ) from None
    same = all(saved.get(k) == v for k, v in identity.items())
    return rule if same else None
