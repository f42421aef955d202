"""Boxes scored as the RSNA Pneumonia Detection Challenge scores them, and the box strings that
every stage reads and writes.

The challenge's score: for each image and each IoU threshold t in 0.40, 0.45, ..., 0.75,
TP(t) / (TP(t) + FP(t) + FN(t)). Predicted boxes are taken in order of descending confidence;
each is matched to the still-unmatched expert box it overlaps most, when that IoU is greater
than t ("a predicted object is considered a hit if its intersection over union with a ground
truth object is greater than" t). A matched prediction is a TP, an unmatched one a FP, an
unmatched expert box a FN. An image scores the mean over the thresholds, and the score is the
mean over images. An image with no expert box and no prediction is left out; one with no
expert box and any prediction scores 0, as does one with expert boxes and no prediction.

Boxes are `[x, y, width, height]` in pixels (Kaggle's form). A `PredictionString` is
`"confidence x y width height confidence x y width height ..."`; empty means no box.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_convert, box_iou

from pneumolib.base.errors import UsageError
from pneumolib.base.metrics import bootstrap_indices, percentile_ci

THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)  # the challenge's IoU thresholds
CHUNK = 2_000_000  # bootstrap elements gathered at once (bounds memory on large splits)

BoxesScores = tuple[np.ndarray, np.ndarray]  # boxes (m, 4) [x, y, w, h], scores (m,)


# --------------------------------------------------------------------------- box strings
def as_boxes(boxes: Any, what: str = "boxes") -> np.ndarray:
    """`boxes` as a float64 array (n, 4) of `[x, y, width, height]`; an empty input gives
    (0, 4). A shape other than (n, 4), a value that is not finite or a negative width or height
    is refused with a one-line error that starts with `what`."""
    arr = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise UsageError(
            f"{what}: expected boxes of shape (n, 4) as [x, y, width, height], "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise UsageError(f"{what}: a box holds a value that is not a finite number")
    if (arr[:, 2:] < 0).any():
        raise UsageError(f"{what}: a box has a negative width or height")
    return arr


def parse_prediction_string(s: str | float | None) -> BoxesScores:
    """Kaggle's `"conf x y w h conf x y w h ..."` -> (boxes (m, 4) [x, y, w, h], scores (m,)),
    in the string's order; an empty string, None or NaN (an empty CSV cell) is no box."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return np.zeros((0, 4)), np.zeros(0)
    tokens, what = str(s).split(), f"PredictionString {str(s)[:60]!r}"
    if len(tokens) % 5:
        raise UsageError(
            f"{what}: expected 5 numbers per box "
            f"(confidence x y width height), got {len(tokens)} numbers"
        )
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise UsageError(f"{what}: holds a word that is not a number") from None
    if not np.isfinite(values[:, 0]).all():
        raise UsageError(f"{what}: a confidence is not a finite number")
    return as_boxes(values[:, 1:], what), values[:, 0]


def format_prediction_string(boxes: Any, scores: Any) -> str:
    """Boxes (m, 4) [x, y, w, h] and scores (m,) as Kaggle's PredictionString, in order of
    descending confidence: the confidence with 4 decimals, the box in whole pixels (its corners
    rounded, so its edges move by at most half a pixel), as Kaggle's sample `0.5 0 0 100 100`."""
    b = as_boxes(boxes)
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(p) != len(b):
        raise UsageError(f"{len(b)} boxes but {len(p)} confidences: one confidence per box")
    corners = np.rint(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)).astype(np.int64)
    parts = []
    for i in np.argsort(-p, kind="stable"):
        x1, y1, x2, y2 = (int(v) for v in corners[i])
        parts.append(f"{p[i]:.4f} {x1} {y1} {x2 - x1} {y2 - y1}")
    return " ".join(parts)


# --------------------------------------------------------------------------- the score
def _xyxy(boxes: np.ndarray) -> torch.Tensor:
    """[x, y, w, h] (n, 4) -> corners [x1, y1, x2, y2] (n, 4), float64 so that IoUs of
    whole-pixel boxes are exact ratios."""
    return box_convert(torch.tensor(boxes, dtype=torch.float64), in_fmt="xywh", out_fmt="xyxy")


def image_score(truth: Any, boxes: Any, scores: Any) -> float:
    """One image's score: the mean over `THRESHOLDS` of TP / (TP + FP + FN), for expert boxes
    `truth` (n, 4) and predictions `boxes` (m, 4) with confidences `scores` (m,), all boxes
    [x, y, w, h]. NaN when the image has neither (it is left out of the mean)."""
    gt, pred = as_boxes(truth, "truth"), as_boxes(boxes, "predicted boxes")
    conf = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(conf) != len(pred):
        raise UsageError(f"{len(pred)} predicted boxes but {len(conf)} confidences")
    if not np.isfinite(conf).all():
        raise UsageError("a confidence is not a finite number")
    n, m = len(gt), len(pred)
    if n == 0 and m == 0:
        return math.nan
    if n == 0 or m == 0:
        return 0.0  # every prediction a FP, or every expert box a FN, at every threshold
    order = np.argsort(-conf, kind="stable")  # ties keep the given order
    matched, _ = _match(gt, pred[order], np.asarray(THRESHOLDS))
    tp = matched.sum(axis=1)  # (T,)
    return float(np.mean(tp / (n + m - tp)))  # TP + FP + FN = TP + (m - TP) + (n - TP)


def _match(
    gt: np.ndarray, pred: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The challenge's matching: predictions `pred` (m, 4) in order of confidence against
    expert boxes `gt` (n, 4), each to the free expert box of highest IoU above each threshold
    (T,) -> (expert boxes matched (T, n), predictions that matched (T, m))."""
    iou = box_iou(_xyxy(pred), _xyxy(gt)).numpy()  # (m, n), rows by confidence
    thr = thresholds[:, None]  # (T, 1)
    matched = np.zeros((len(thresholds), len(gt)), dtype=bool)  # (T, n) expert boxes taken
    hits = np.zeros((len(thresholds), len(pred)), dtype=bool)
    # A prediction with no IoU above the lowest threshold matches nothing at any threshold.
    for i in np.flatnonzero((iou > thr.min()).any(axis=1)):
        free = (iou[i] > thr) & ~matched  # (T, n): strictly greater, as the challenge says
        best = np.where(free, iou[i], -1.0).argmax(axis=1)  # highest IoU (first on a tie)
        hit = free.any(axis=1)
        matched[hit, best[hit]] = True
        hits[:, i] = hit
    return matched, hits


def box_outcomes(
    truth: Any, boxes: Any, scores: Any, *, iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Which predictions hit and which expert boxes were found at one IoU threshold, matched
    as the challenge matches: -> (predictions that hit (m,) in the given order, expert boxes
    found (n,)). For pictures: hits, false boxes and missed boxes told apart."""
    gt, pred = as_boxes(truth, "truth"), as_boxes(boxes, "predicted boxes")
    conf = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros(len(pred), dtype=bool), np.zeros(len(gt), dtype=bool)
    order = np.argsort(-conf, kind="stable")
    matched, hits = _match(gt, pred[order], np.asarray([iou]))
    hit = np.zeros(len(pred), dtype=bool)
    hit[order] = hits[0]
    return hit, matched[0]


def _prediction_table(predictions: Any) -> dict[str, BoxesScores]:
    """{patientId: (boxes, scores)} from a mapping of that form or from a DataFrame with
    Kaggle's columns `patientId, PredictionString` (one row per patient)."""
    if isinstance(predictions, pd.DataFrame):
        missing = {"patientId", "PredictionString"} - set(predictions.columns)
        if missing:
            raise UsageError(
                f"predictions: missing column(s) {sorted(missing)}; expected "
                "Kaggle's patientId,PredictionString"
            )
        ids = predictions["patientId"].astype(str)
        if ids.duplicated().any():
            raise UsageError(
                f"predictions: patientId {ids[ids.duplicated()].iloc[0]} has more "
                "than one row; put all of a patient's boxes in one row"
            )
        out = {}
        for pid, s in zip(ids, predictions["PredictionString"], strict=True):
            try:
                out[pid] = parse_prediction_string(s)
            except UsageError as err:
                raise UsageError(f"predictions, patientId {pid}: {err}") from None
        return out
    if not isinstance(predictions, Mapping):
        raise UsageError(
            "predictions: expected {patientId: (boxes, scores)} or a DataFrame "
            f"with columns patientId, PredictionString; got {type(predictions)}"
        )
    out = {}
    for pid, value in predictions.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise UsageError(f"predictions, patientId {pid}: expected (boxes, scores)")
        out[str(pid)] = (value[0], value[1])
    return out


def image_scores(truth: Mapping[str, Any], predictions: Any) -> pd.Series:
    """Each image's score (NaN where it is left out), indexed by the patientIds of `truth`
    {patientId: boxes (n, 4) [x, y, w, h]}. `predictions` is {patientId: (boxes (m, 4),
    scores (m,))} or a DataFrame `patientId, PredictionString`; a patient missing from it has
    no predicted box, and a prediction for a patient not in `truth` is refused."""
    pred = _prediction_table(predictions)
    ids = [str(k) for k in truth]
    unknown = set(pred) - set(ids)
    if unknown:
        raise UsageError(
            f"predictions for {len(unknown)} patient(s) with no truth, e.g. "
            f"{sorted(unknown)[0]}: score boxes against the split they were made for"
        )
    empty: BoxesScores = (np.zeros((0, 4)), np.zeros(0))
    values = []
    for pid, gt in zip(ids, truth.values(), strict=True):
        try:
            values.append(image_score(gt, *pred.get(pid, empty)))
        except UsageError as err:
            raise UsageError(f"patientId {pid}: {err}") from None
    return pd.Series(values, index=pd.Index(ids, name="patientId"), name="rsna_map")


def read_box_csv(path: str | Path) -> dict[str, BoxesScores]:
    """A `patientId, PredictionString` CSV (Kaggle's form) -> {patientId: (boxes (m, 4),
    confidences (m,))}; a one-line UsageError for a missing file or other columns."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: not found")
    table = pd.read_csv(path, dtype={"patientId": str}, keep_default_na=False)
    if not {"patientId", "PredictionString"} <= set(table.columns):
        raise UsageError(f"{path}: expected the columns patientId,PredictionString")
    pairs = zip(table["patientId"], table["PredictionString"], strict=True)
    return {pid: parse_prediction_string(text) for pid, text in pairs}


def bootstrap_means(s: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The mean of the counted (non-NaN) image scores `s` (N,) on each resample of
    `bootstrap_indices(N, n_boot, seed)` -> (n_boot,); NaN where a resample counts none."""
    counted = ~np.isnan(s)
    vals = np.where(counted, s, 0.0)
    idx = bootstrap_indices(len(s), n_boot, seed)
    step = max(1, CHUNK // len(s))
    sums = np.concatenate([vals[idx[i : i + step]].sum(1) for i in range(0, n_boot, step)])
    counts = np.concatenate([counted[idx[i : i + step]].sum(1) for i in range(0, n_boot, step)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums / counts


def rsna_map(
    truth: Mapping[str, Any], predictions: Any, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The challenge's score of `predictions` against `truth` (see `image_scores` for both
    forms): `value`, `ci` [lo, hi] (95% percentile bootstrap over the patients of `truth`, the
    resamples of `bootstrap_indices(N, n_boot, seed)` that every other CI uses) and `n_images`
    (the images that count). NaN where no image counts; the CI is NaN with `n_boot=0`."""
    s = image_scores(truth, predictions).to_numpy()
    counted = ~np.isnan(s)
    n_images = int(counted.sum())
    value = float(s[counted].mean()) if n_images else math.nan
    ci = [math.nan, math.nan]
    if n_images and n_boot > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = [float(v) for v in percentile_ci(bootstrap_means(s, n_boot, seed), 0.05)]
    return {"value": value, "ci": ci, "n_images": n_images}
