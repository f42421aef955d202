"""The sentences notebooks 03 and 04 print: each one exact on small hand-made inputs, so a
figure a reader sees is the one the code read (and a wording change is a visible diff)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pneumolib.evaluate.calibration import Calibration, logit
from pneumolib.evaluate.sentences import (
    best_epoch_sentence,
    best_epochs_sentence,
    calibration_sentence,
    calibration_steps,
    prior_sentence,
    ranking_sentence,
    risk_band_sentence,
    split_sentence,
    subgroup_sentence,
    three_class_sentence,
    threshold_sentences,
    tta_sentence,
)


def _history(auc: list[float], loss: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, len(auc) + 1), "val_auc": auc, "val_loss": loss})


def test_best_epoch_follows_the_trainers_rule_and_reports_the_last_epochs():
    hist = _history([0.5, 0.8, 0.8, 0.7], [0.7, 0.6, 0.5, 0.65])  # a tie goes to the lower loss
    assert best_epoch_sentence(hist, last=3) == (
        "best.pt holds epoch 3 of 4 (val AUC 0.800, val loss 0.500); over the last 3 epochs "
        "val AUC stayed between 0.700 and 0.800."
    )
    never = _history([math.nan, math.nan], [math.nan, math.nan])
    assert best_epoch_sentence(never) == (
        "No epoch of 2 has a usable validation score: best.pt is the first."
    )


def test_best_epochs_orders_runs_by_val_auc():
    table = pd.DataFrame(
        {"epochs": [5, 6, 3], "best_epoch": [2, 4, None], "val_auc": [0.7, 0.9, math.nan]},
        index=pd.Index(["a", "b", "c"], name="run"),
    )
    assert best_epochs_sentence(table) == (
        "Best validation AUC, highest first: b 0.900 (epoch 4 of 6), a 0.700 (epoch 2 of 5), "
        "c n/a (epoch n/a of 3)."
    )


def _runs() -> dict[str, pd.DataFrame]:
    rows = [
        {"run": "a", "n": 45, "n_pos": 12, "roc_auc": 0.7, "roc_auc_lo": 0.5, "roc_auc_hi": 0.85},
        {"run": "b", "n": 45, "n_pos": 12, "roc_auc": 0.8, "roc_auc_lo": 0.65, "roc_auc_hi": 0.9},
    ]
    return {"runs": pd.DataFrame(rows), "pairs": pd.DataFrame()}


def test_ranking_orders_runs_by_auc_and_gives_the_widest_interval():
    assert ranking_sentence(_runs()) == (
        "On the same 45 patients (12 positive), AUC highest first: b 0.800 [0.650, 0.900], "
        "a 0.700 [0.500, 0.850]. The widest interval spans 0.350: gaps smaller than that are "
        "not settled by each run's own interval; the paired intervals test them."
    )


def _split(name: str = "test", **changes) -> dict:
    m = {
        "split": name,
        "n": 40,
        "n_pos": 10,
        "prevalence": 0.25,
        "roc_auc": 0.8,
        "roc_auc_ci": [0.65, 0.92],
        "average_precision": 0.6,
        "average_precision_ci": [0.4, 0.8],
    }
    return m | changes


def test_split_gives_auc_and_ap_with_intervals_and_the_random_baseline():
    assert split_sentence(_split()) == (
        "test: ROC AUC 0.800 [0.650, 0.920] and average precision 0.600 [0.400, 0.800] (a "
        "random ranking scores 0.250) on 40 patients (10 positive); the AUC interval is 0.270 "
        "wide."
    )
    one_class = _split("val", roc_auc=None, roc_auc_ci=[None, None], average_precision_ci=None)
    assert split_sentence(one_class) == (
        "val: ROC AUC n/a and average precision 0.600 (a random ranking scores 0.250) on 40 "
        "patients (10 positive); the AUC has no interval (one class only)."
    )


def _at(t: float, recall: float, spec: float) -> dict:
    return {"threshold": t, "recall": recall, "specificity": spec}


def test_thresholds_say_what_val_chose_and_how_recall_moves_on_test():
    val = {
        "thresholds": {
            "0.5": _at(0.5, 0.5, 0.9),
            "youden": _at(0.2, 0.8, 0.7),
            "sens@0.90": _at(0.2, 0.8, 0.7),
            "best_f1": _at(0.3, 0.7, 0.8),
        }
    }
    test = {
        "thresholds": {
            "0.5": _at(0.5, 0.4, 0.95),
            "youden": _at(0.2, 0.5, 0.75),
            "sens@0.90": _at(0.2, 0.5, 0.75),
        }
    }
    assert threshold_sentences(val, test) == [
        "Chosen on val: youden 0.200, sens@0.90 0.200, best_f1 0.300 (youden and sens@0.90 "
        "coincide; 0.5 is fixed).",
        "0.5 (0.500): recall 0.500 on val, 0.400 on test (-0.100); specificity 0.900 on val, "
        "0.950 on test.",
        "youden (0.200): recall 0.800 on val, 0.500 on test (-0.300); specificity 0.700 on "
        "val, 0.750 on test.",
        "sens@0.90 (0.200): recall 0.800 on val, 0.500 on test (-0.300); specificity 0.700 on "
        "val, 0.750 on test.",
    ]  # best_f1 is missing from test: no line for it


def _group(variable: str, group: str, n: int, n_pos: int, auc, lo=None, hi=None) -> dict:
    row = {"variable": variable, "group": group, "n": n, "n_pos": n_pos, "roc_auc": auc}
    return row | {"roc_auc_lo": lo, "roc_auc_hi": hi, "threshold_name": "youden"}


def test_subgroups_give_each_groups_auc_and_name_the_undefined_ones():
    metrics = {
        "subgroups": [
            _group("view", "AP", 20, 8, 0.75, 0.5, 0.95),
            _group("view", "PA", 25, 4, 0.7, 0.45, 1.0),
            _group("age_band", "<20", 2, 0, None),
            _group("age_band", "40-59", 20, 6, 0.8, 0.6, 0.95),
            _group("age_band", "60+", 10, 10, math.nan),
            {**_group("view", "AP", 20, 8, 0.1), "threshold_name": "0.5"},  # another threshold
        ]
    }
    assert subgroup_sentence(metrics, "view") == (
        "By view: AP (20 patients, 8 positive) AUC 0.750 [0.500, 0.950]; PA (25 patients, "
        "4 positive) AUC 0.700 [0.450, 1.000]."
    )
    assert subgroup_sentence(metrics, "age_band") == (
        "By age_band: 40-59 (20 patients, 6 positive) AUC 0.800 [0.600, 0.950]. AUC undefined "
        "(one class only): <20 (2 patients, 0 positive); 60+ (10 patients, 10 positive)."
    )
    assert subgroup_sentence(metrics, "sex") == "No sex subgroups in these metrics."


def _block(method: str = "platt") -> dict:
    return {
        "method": method,
        "prevalence": 0.25,
        "temperature": 1.5,
        "raw": {"mean_prob": 0.5, "ece": 0.3, "ece_ci": [0.2, 0.4]},
        "calibrated": {"mean_prob": 0.26, "ece": 0.08, "ece_ci": [0.05, 0.15]},
    }


def test_calibration_says_mean_and_ece_before_and_after():
    assert calibration_sentence({"split": "test", "calibration": _block()}) == (
        "Calibration (figures/reliability_test.png): the network's raw probabilities average "
        "0.50 on test against 0.25 positive (balanced batches train the model as if half the "
        "patients were positive). The prior correction and Platt scaling (a scale and a bias), "
        "fitted on val (calibration.json), bring the mean to 0.26 and the expected calibration "
        "error from 0.300 [0.200, 0.400] to 0.080 [0.050, 0.150], leaving the ranking (AUC) as "
        "it was: `prob` and `predict`'s `probability` are now a risk, the raw score stays as "
        "`prob_raw`."
    )
    text = calibration_sentence({"split": "val", "calibration": _block("temperature")})
    assert "a temperature (1.50)" in text and "reliability_val.png" in text
    assert calibration_sentence({"split": "test", "ece": 0.1}) == (
        "Calibration: expected calibration error 0.100 on test."
    )


def test_prior_says_what_training_added_and_what_was_fitted():
    shift = (float(logit(0.25)),)  # balanced batches, no loss weight
    cal = Calibration(method="platt", shift=shift, platt=(1.5, -0.2), train_prevalence=0.25)
    assert prior_sentence(cal) == (
        "Train prevalence 0.250: training added +1.099 to every logit, so a patient whose risk "
        "is 0.250 was scored 0.500; the prior correction undoes it (x = logit -1.099). Platt's "
        "fit then gives sigmoid(a x + b) with a = 1.500, b = -0.200."
    )
    bare = Calibration(method="temperature", shift=(0.5,), temperature=2.0)
    assert prior_sentence(bare) == "Prior correction: +0.500 added to every logit."


def test_calibration_steps_apply_the_prior_alone_between_raw_and_calibrated():
    pred = pd.DataFrame({"prob_raw": [0.5, 0.5], "prob": [0.1, 0.3], "target": [0, 1]})
    steps = calibration_steps({"val": pred}, Calibration(method="platt", shift=(math.log(3),)))
    assert list(steps.columns) == ["raw", "prior corrected", "calibrated", "positive"]
    assert steps.loc["val"].tolist() == pytest.approx([0.5, 0.75, 0.2, 0.5])


def test_risk_band_counts_patients_and_positives_in_the_band():
    pred = pd.DataFrame(
        {
            "prob": [0.25, 0.3, 0.35, 0.35, 0.9],
            "prob_raw": [0.6, 0.7, 0.8, 0.9, 0.95],
            "target": [0, 1, 0, 1, 1],
        }
    )
    assert risk_band_sentence(pred, 0.2, 0.4) == (
        "Between 0.200 and 0.400: the calibrated probabilities put 4 patients there (mean "
        "0.312), 2 of them positive (0.500, 95% CI [0.150, 0.850]); the raw probabilities put "
        "no patient there."
    )


def test_three_class_gives_auc_per_class_macro_f1_and_the_calls():
    block = {
        "classes": ["Normal", "Not Normal", "Lung Opacity"],
        "auc_ovr": {"Normal": 0.6, "Not Normal": 0.55, "Lung Opacity": 0.7},
        "auc_ovr_ci": {"Normal": [0.4, 0.8], "Not Normal": [0.3, 0.75], "Lung Opacity": [0.5, 0.9]},
        "confusion": np.array([[0, 5, 0], [0, 10, 1], [0, 3, 1]]).tolist(),
        "macro_f1": 0.25,
        "macro_f1_ci": [0.1, 0.4],
    }
    assert three_class_sentence(block) == (
        "One-vs-rest AUC: Normal 0.600 [0.400, 0.800], Not Normal 0.550 [0.300, 0.750], "
        "Lung Opacity 0.700 [0.500, 0.900]; macro-F1 0.250 [0.100, 0.400]. The most probable "
        "class is Normal for 0, Not Normal for 18, Lung Opacity for 2 of 20 patients."
    )


def test_tta_names_the_variants_and_compares_auc_and_ece():
    plain = {"roc_auc": 0.8, "roc_auc_ci": [0.7, 0.9], "ece": 0.1}
    tta = {"roc_auc": 0.82, "roc_auc_ci": [0.72, 0.91], "ece": 0.09}
    tta["tta_variants"] = ["identity", "x+4%", "zoom 0.95"]
    assert tta_sentence(plain, tta) == (
        "TTA averages 3 variants (identity, x+4%, zoom 0.95). ROC AUC 0.800 [0.700, 0.900] "
        "without, 0.820 [0.720, 0.910] with; ECE 0.100 without, 0.090 with."
    )
