"""The challenge's box score: one hand-worked case per rule (confidence order, one expert box
per prediction, the strict IoU threshold, the images left out or scored 0), an independent
brute-force reference on random boxes, the bootstrap CI, and Kaggle's PredictionString."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.ops import box_convert, box_iou

import pneumolib as pl
from pneumolib.base.errors import UsageError
from pneumolib.base.metrics import bootstrap_indices
from pneumolib.evaluate.boxes import (
    THRESHOLDS,
    format_prediction_string,
    image_score,
    image_scores,
    parse_prediction_string,
    rsna_map,
)

NONE = np.zeros((0, 4))


# --------------------------------------------------------------------------- hand-worked rules
def test_the_thresholds_are_the_challenges():
    assert THRESHOLDS == pytest.approx(np.arange(8) * 0.05 + 0.40)


def test_a_perfect_box_scores_1_and_a_missed_one_0():
    box = [[100, 200, 50, 80]]
    assert image_score(box, box, [0.3]) == 1.0
    assert image_score(box, [[400, 400, 50, 80]], [0.9]) == 0.0  # 1 FP + 1 FN, 0 TP


def test_higher_confidence_is_matched_first_and_takes_its_best_box():
    """G1 = [0,0,10,10], G2 = [4,0,10,10]. P1 = [1,0,10,10]: IoU 90/110 with G1, 70/130 with
    G2. P2 = G1: IoU 1 with G1, 60/140 with G2.
    P1 first: P1 takes G1 (its best); P2 gets G2 only where 60/140 = 0.43 > t, i.e. t = 0.40.
      t = 0.40: 2 TP -> 1; t = 0.45 ... 0.75: 1 TP, 1 FP, 1 FN -> 1/3. Mean (1 + 7/3)/8 = 5/12.
    P2 first: P2 takes G1; P1 gets G2 where 70/130 = 0.54 > t, i.e. t = 0.40, 0.45, 0.50.
      3 thresholds score 1, 5 score 1/3: mean (3 + 5/3)/8 = 7/12."""
    truth = [[0, 0, 10, 10], [4, 0, 10, 10]]
    preds = [[1, 0, 10, 10], [0, 0, 10, 10]]  # P1, P2, same array order both times
    assert image_score(truth, preds, [0.9, 0.1]) == pytest.approx(5 / 12)
    assert image_score(truth, preds, [0.1, 0.9]) == pytest.approx(7 / 12)


def test_one_prediction_matches_at_most_one_expert_box():
    """Two expert boxes in the same place and one prediction on them: 1 TP and 1 FN at every
    threshold -> 1/2 (a prediction counted for both would score 1)."""
    truth = [[10, 10, 40, 40], [10, 10, 40, 40]]
    assert image_score(truth, [[10, 10, 40, 40]], [0.9]) == 0.5
    assert image_score(truth, [[10, 10, 40, 40]] * 2, [0.9, 0.8]) == 1.0  # two predictions: 2 TP
    # and one expert box with two predictions on it: 1 TP and 1 FP -> 1/2
    assert image_score(truth[:1], [[10, 10, 40, 40]] * 2, [0.9, 0.8]) == 0.5


@pytest.mark.parametrize(
    ("height", "iou", "thresholds_passed"),
    [(8, 0.40, 0), (9, 0.45, 1), (10, 0.50, 2), (15, 0.75, 7), (16, 0.80, 8)],
)
def test_the_iou_must_be_strictly_greater_than_the_threshold(height, iou, thresholds_passed):
    """Truth [0,0,20,20] and prediction [0,0,20,h]: IoU = 20h/400 = h/20 exactly. A box whose
    IoU equals t is a miss at t (1 FP + 1 FN -> 0) and a hit below it (-> 1)."""
    truth, pred = [[0, 0, 20, 20]], [[0, 0, 20, height]]
    exact = box_iou(
        *(box_convert(torch.tensor(b, dtype=torch.float64), "xywh", "xyxy") for b in (pred, truth))
    )
    assert float(exact) == iou  # the IoU is the threshold's own float: nothing rounds
    assert image_score(truth, pred, [1.0]) == thresholds_passed / 8


def test_an_image_with_no_box_and_no_prediction_is_left_out():
    truth = {"a": [[0, 0, 10, 10]], "b": NONE, "c": []}
    got = rsna_map(truth, {"a": ([[0, 0, 10, 10]], [0.9])}, n_boot=50)
    assert got["value"] == 1.0 and got["n_images"] == 1
    scores = image_scores(truth, {"a": ([[0, 0, 10, 10]], [0.9]), "c": (NONE, [])})
    assert scores["a"] == 1.0 and math.isnan(scores["b"]) and math.isnan(scores["c"])


def test_no_truth_with_any_prediction_scores_0_and_counts():
    truth = {"a": [[0, 0, 10, 10]], "b": NONE}
    preds = {"a": ([[0, 0, 10, 10]], [0.9]), "b": ([[50, 50, 5, 5]], [0.01])}
    assert image_score(NONE, [[50, 50, 5, 5]], [0.01]) == 0.0
    got = rsna_map(truth, preds, n_boot=50)
    assert got["value"] == 0.5 and got["n_images"] == 2


def test_truth_with_no_prediction_scores_0():
    assert image_score([[0, 0, 10, 10]], NONE, []) == 0.0
    got = rsna_map({"a": [[0, 0, 10, 10]], "b": [[0, 0, 10, 10]]}, {"a": ([[0, 0, 10, 10]], [1])})
    assert got["value"] == 0.5 and got["n_images"] == 2  # b missing from predictions: no box


def test_a_kaggle_frame_scores_as_the_mapping():
    truth = {"a": [[0, 0, 10, 10]], "b": NONE, "c": [[5, 5, 20, 20], [40, 40, 10, 10]]}
    frame = pd.DataFrame(
        {
            "patientId": ["a", "b", "c"],
            "PredictionString": ["0.9 1 0 10 10", np.nan, "0.5 5 5 20 19 0.7 0 0 3 3"],
        }
    )
    mapping = {pid: parse_prediction_string(s) for pid, s in zip(*frame.to_numpy().T, strict=True)}
    assert rsna_map(truth, frame) == rsna_map(truth, mapping)
    assert rsna_map(truth, frame)["n_images"] == 2


def test_bad_predictions_are_refused_with_the_patient_named():
    truth = {"a": [[0, 0, 10, 10]]}
    with pytest.raises(UsageError, match="no truth, e.g. zz"):
        rsna_map(truth, {"zz": ([[0, 0, 1, 1]], [0.5])})
    frame = pd.DataFrame({"patientId": ["a", "a"], "PredictionString": ["", ""]})
    with pytest.raises(UsageError, match="patientId a has more than one row"):
        rsna_map(truth, frame)
    frame = pd.DataFrame({"patientId": ["a"], "PredictionString": ["0.5 1 2 3"]})
    with pytest.raises(UsageError, match="patientId a: PredictionString '0.5 1 2 3': expected 5"):
        rsna_map(truth, frame)
    with pytest.raises(UsageError, match="patientId a: 1 predicted boxes but 2 confidences"):
        rsna_map(truth, {"a": ([[0, 0, 1, 1]], [0.5, 0.4])})
    with pytest.raises(UsageError, match="patientId a: truth: expected boxes of shape"):
        rsna_map({"a": [[0, 0, 10]]}, {})
    with pytest.raises(UsageError, match="missing column"):
        rsna_map(truth, pd.DataFrame({"patientId": ["a"]}))


# --------------------------------------------------------------------------- brute force
def _iou(a, b) -> float:
    """IoU of two [x, y, w, h] boxes, by hand."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _reference(truth, boxes, scores) -> float:
    """The challenge's image score written as the rule reads, with plain loops."""
    if not truth and not boxes:
        return math.nan
    order = sorted(range(len(boxes)), key=lambda j: -scores[j])  # stable: ties keep order
    per_t = []
    for t in [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]:
        taken = [False] * len(truth)
        tp = 0
        for j in order:
            best, best_iou = None, -1.0
            for i, g in enumerate(truth):
                v = _iou(boxes[j], g)
                if not taken[i] and v > t and v > best_iou:
                    best, best_iou = i, v
            if best is not None:
                taken[best] = True
                tp += 1
        fp, fn = len(boxes) - tp, len(truth) - tp
        per_t.append(tp / (tp + fp + fn))
    return sum(per_t) / len(per_t)


def _random_case(rng: np.random.Generator, n_images: int = 200):
    """Integer boxes on a small grid (many overlaps, exact ties of IoU and of confidence)."""
    truth, preds, ref = {}, {}, {}
    for k in range(n_images):

        def boxes(n: int) -> list[list[int]]:
            xy = rng.integers(0, 12, size=(n, 2))
            wh = rng.integers(2, 10, size=(n, 2))
            return np.hstack([xy, wh]).tolist()

        g, p = boxes(rng.integers(0, 5)), boxes(rng.integers(0, 7))
        s = np.round(rng.random(len(p)), 1).tolist()
        pid = f"p{k:03d}"
        truth[pid], preds[pid], ref[pid] = g, (p, s), _reference(g, p, s)
    return truth, preds, pd.Series(ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_brute_force_reference_on_random_boxes(seed):
    truth, preds, ref = _random_case(np.random.default_rng(seed))
    got = image_scores(truth, preds)
    assert list(got.index) == list(ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)
    assert ref.isna().any() and (ref == 0).any() and ((ref > 0) & (ref < 1)).any()  # all cases
    summary = rsna_map(truth, preds, n_boot=0)
    assert summary["value"] == pytest.approx(ref.mean(), abs=1e-12)  # pandas skips NaN
    assert summary["n_images"] == int(ref.notna().sum())
    assert all(math.isnan(v) for v in summary["ci"])


# --------------------------------------------------------------------------- bootstrap
def test_the_ci_resamples_patients_contains_the_value_and_repeats_with_the_seed():
    truth, preds, ref = _random_case(np.random.default_rng(7), n_images=120)
    a = rsna_map(truth, preds, n_boot=400, seed=3)
    assert a == rsna_map(truth, preds, n_boot=400, seed=3)
    assert a["ci"] != rsna_map(truth, preds, n_boot=400, seed=4)["ci"]
    lo, hi = a["ci"]
    assert lo < a["value"] < hi and hi - lo < 0.5
    # the same interval from an explicit loop over the shared resamples of all patients
    s = ref.to_numpy()
    means = [np.nanmean(s[row]) for row in bootstrap_indices(len(s), 400, 3)]
    assert a["ci"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])), abs=1e-12)


def test_no_image_that_counts_gives_nan():
    got = rsna_map({"a": NONE}, {})
    assert got["n_images"] == 0 and math.isnan(got["value"]) and all(map(math.isnan, got["ci"]))


# --------------------------------------------------------------------------- PredictionString
def test_format_orders_by_confidence_and_rounds_as_kaggle_writes():
    boxes = [[10.6, 20.4, 20.6, 30.2], [0, 0, 100, 100]]
    assert (
        format_prediction_string(boxes, [0.87654, 0.5]) == "0.8765 11 20 20 31 0.5000 0 0 100 100"
    )
    assert format_prediction_string(boxes, [0.1, 0.5]) == "0.5000 0 0 100 100 0.1000 11 20 20 31"
    assert format_prediction_string(NONE, []) == ""
    with pytest.raises(UsageError, match="2 boxes but 1 confidences"):
        format_prediction_string(boxes, [0.5])


def test_parse_and_format_round_trip():
    rng = np.random.default_rng(0)
    boxes = np.hstack([rng.integers(0, 900, (6, 2)), rng.integers(1, 300, (6, 2))]).astype(float)
    scores = np.round(rng.random(6), 4)
    text = format_prediction_string(boxes, scores)
    b, s = parse_prediction_string(text)
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(b, boxes[order])
    np.testing.assert_array_equal(s, scores[order])
    assert format_prediction_string(b, s) == text
    assert b.shape == (6, 4) and b.dtype == np.float64


@pytest.mark.parametrize("empty", ["", "  ", None, float("nan")])
def test_an_empty_prediction_string_is_no_box(empty):
    b, s = parse_prediction_string(empty)
    assert b.shape == (0, 4) and s.shape == (0,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5 1 2 3", "expected 5 numbers per box"),
        ("0.5 1 2 x 4", "not a number"),
        ("0.5 1 2 -3 4", "negative width or height"),
        ("nan 1 2 3 4", "confidence is not a finite number"),
    ],
)
def test_a_bad_prediction_string_is_refused_in_one_line(text, message):
    with pytest.raises(UsageError, match=message) as err:
        parse_prediction_string(text)
    assert "\n" not in str(err.value) and repr(text) in str(err.value)


def test_the_stage_exports_the_metric():
    assert pl.evaluate.rsna_map is rsna_map
    assert "rsna_map" in pl.evaluate.__all__
