"""pneumolib.base.metrics against scikit-learn: point metrics, bootstrap CIs, thresholds,
subgroups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from predictions_data import scores as _scores
from predictions_data import table as _table
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pneumolib.base import metrics as ev
from pneumolib.evaluate import reference


# --------------------------------------------------------------------------- point metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_equal_sklearn(seed, threshold):
    y, p = _scores(300, seed, decimals=2)  # rounding makes ties, which sklearn handles its way
    m = ev.binary_metrics(y, p, threshold)
    hat = p >= threshold
    tn, fp, fn, tp = skm.confusion_matrix(y, hat).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, hat))
    assert m["precision"] == pytest.approx(skm.precision_score(y, hat))
    assert m["recall"] == m["sensitivity"] == pytest.approx(skm.recall_score(y, hat))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, hat, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, hat))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, hat))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert ev.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p))


def test_undefined_metrics_are_nan_not_zero():
    m = ev.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["average_precision"])
    assert math.isnan(m["precision"]) and math.isnan(m["recall"])  # no calls, no positives
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0


def test_reliability_matches_sklearn_calibration_curve():
    y, p = _scores(500, 3)
    p[:6] = [0.0, 0.1, 0.2, 0.5, 0.9, 1.0]  # values on bin edges go where sklearn puts them
    table = ev.reliability(y, p, n_bins=10)
    assert table["count"].sum() == len(y)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    used = table[table["count"] > 0]
    np.testing.assert_allclose(used["observed"], prob_true)
    np.testing.assert_allclose(used["mean_pred"], prob_pred)
    assert 0 <= ev.expected_calibration_error(table) <= 1


def test_quantile_reliability_bins_hold_equal_counts_like_sklearn():
    y, p = _scores(400, 5, shift=4.0)  # a confident model: most p near 1
    table = ev.reliability(y, p, n_bins=8, strategy="quantile")
    assert len(table) == 8 and set(table["count"]) == {50}
    prob_true, prob_pred = calibration_curve(y, p, n_bins=8, strategy="quantile")
    np.testing.assert_allclose(table["observed"], prob_true)
    np.testing.assert_allclose(table["mean_pred"], prob_pred)
    assert (table["count"] > 0).sum() > (ev.reliability(y, p, 8)["count"] > 0).sum()
    tied = ev.reliability([0, 0, 1, 1, 1, 1], [0.1, 0.1, 0.9, 0.9, 0.9, 0.9], 4, "quantile")
    assert len(tied) < 4 and list(tied.loc[tied["count"] > 0, "count"]) == [2, 4]  # ties merge
    with pytest.raises(ValueError, match="strategy"):
        ev.reliability(y, p, 4, strategy="kmeans")


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded():
    y, p = _scores(400, 4)
    a = ev.bootstrap_ci(y, p, threshold=0.5, n_boot=200, seed=7)
    b = ev.bootstrap_ci(y, p, threshold=0.5, n_boot=200, seed=7)
    c = ev.bootstrap_ci(y, p, threshold=0.5, n_boot=200, seed=8)
    assert a == b
    assert a["roc_auc"] != c["roc_auc"]
    assert set(a) == set(ev.CI_METRICS)
    lo, hi = a["roc_auc"]
    assert lo < ev.binary_metrics(y, p)["roc_auc"] < hi


def test_vectorised_resamples_equal_sklearn_on_each_resample():
    y, p = _scores(200, 5, decimals=2)  # ties exercise the per-level counting
    thresholds = [0.25, 0.5]
    n_boot = 15
    dist = ev.bootstrap_distribution(
        y, p, thresholds=thresholds, n_boot=n_boot, seed=11, chunk=1000
    )
    idx = ev.bootstrap_indices(len(y), n_boot, seed=11)  # the same rows the bootstrap used
    assert dist["roc_auc"].shape == (n_boot,) and dist["f1"].shape == (n_boot, 2)
    for r in range(n_boot):
        yr, pr = y[idx[r]], p[idx[r]]
        assert dist["roc_auc"][r] == pytest.approx(skm.roc_auc_score(yr, pr), abs=1e-12)
        ap = skm.average_precision_score(yr, pr)
        assert dist["average_precision"][r] == pytest.approx(ap, abs=1e-12)
        assert dist["brier"][r] == pytest.approx(skm.brier_score_loss(yr, pr))
        for j, t in enumerate(thresholds):
            hat = pr >= t
            tn, fp, fn, tp = skm.confusion_matrix(yr, hat).ravel()
            got = [dist[k][r, j] for k in ("tn", "fp", "fn", "tp")]
            assert got == [tn, fp, fn, tp]
            assert dist["f1"][r, j] == pytest.approx(skm.f1_score(yr, hat))
            assert dist["balanced_accuracy"][r, j] == pytest.approx(
                skm.balanced_accuracy_score(yr, hat)
            )


def test_bootstrap_ci_covers_true_auc_at_about_nominal_rate():
    # Negatives ~ N(0, 1), positives ~ N(d, 1): the true AUC is Phi(d / sqrt 2).
    d, reps = 1.0, 150
    true_auc = 0.5 * (1 + math.erf(d / 2))
    rng = np.random.default_rng(2024)
    y = np.repeat([0, 1], 150)
    hits = 0
    for i in range(reps):
        p = 1 / (1 + np.exp(-(rng.normal(size=len(y)) + d * y)))  # monotone: AUC unchanged
        lo, hi = ev.bootstrap_ci(y, p, n_boot=500, seed=i)["roc_auc"]
        hits += lo <= true_auc <= hi
    assert 0.85 <= hits / reps <= 0.99


# --------------------------------------------------------------------------- thresholds
def _brute(y, p, score):
    """Best value of score(sens, spec, prec) over every threshold that changes a call."""
    best = -np.inf
    for t in np.unique(p):
        m = ev.binary_metrics(y, p, t)
        best = max(best, score(m))
    return best


def test_youden_best_f1_and_sensitivity_thresholds_on_toy_case():
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    thr = ev.choose_thresholds(y, p, target_sensitivity=0.9)
    assert set(thr) == {"0.5", "youden", "best_f1", "sens@0.90"}
    assert thr["youden"] == 0.5  # by hand: sens 5/6, spec 4/4, J = 0.833 (0.35 gives 0.75)

    def youden(m):
        return m["sensitivity"] + m["specificity"] - 1

    assert youden(ev.binary_metrics(y, p, thr["youden"])) == pytest.approx(_brute(y, p, youden))
    f1 = ev.binary_metrics(y, p, thr["best_f1"])["f1"]
    assert f1 == pytest.approx(_brute(y, p, lambda m: m["f1"]))
    # The highest threshold reaching 90% sensitivity: 0.35 (all 6 positives); 0.5 gives 5/6.
    assert thr["sens@0.90"] == 0.35
    assert ev.binary_metrics(y, p, thr["sens@0.90"])["sensitivity"] >= 0.9


# --------------------------------------------------------------------------- subgroups
@pytest.mark.parametrize(("age", "band"), [(5, "<20"), (19.9, "<20"), (20, "20-39"),
                                           (45, "40-59"), (60, "60+"), (95, "60+"),
                                           (float("nan"), "unknown"), (None, "unknown"),
                                           (148, "unknown")])  # fmt: skip
def test_age_band(age, band):
    assert ev.age_band(age) == band


def test_subgroup_counts_add_up_to_the_whole():
    df = _table(500, seed=12)
    thr = {"0.5": 0.5, "low": 0.3}
    sub = ev.subgroup_metrics(df, threshold=thr, n_boot=30)
    assert set(sub["variable"]) == {"view", "sex", "age_band"}
    assert "unknown" in set(sub.loc[sub["variable"] == "sex", "group"])
    assert "unknown" in set(sub.loc[sub["variable"] == "age_band", "group"])
    for name, t in thr.items():
        whole = ev.binary_metrics(df["target"], df["prob"], t)
        for var in ("view", "sex", "age_band"):
            rows = sub[(sub["variable"] == var) & (sub["threshold_name"] == name)]
            for k in ("n", "n_pos", "tn", "fp", "fn", "tp"):
                assert rows[k].sum() == whole[k], (var, name, k)
    assert (sub["roc_auc_lo"] <= sub["roc_auc"]).all() and (
        sub["roc_auc"] <= sub["roc_auc_hi"]
    ).all()


def test_compare_with_reference():
    val = _table(400, seed=16)
    m = ev.summarize(val, thresholds=ev.choose_thresholds(val["target"], val["prob"]), n_boot=50)
    m["split"] = "val"
    df = reference.compare_with_reference(m)
    assert df.loc["course checkpoint", "accuracy"] == 0.8458
    assert df.loc["course checkpoint", "precision"] == 0.700
    assert df.loc["tuned blog", "accuracy"] == 0.8405
    assert df.loc["tuned blog", "precision"] == 0.7025
    hat = val["prob"] >= 0.5
    run_acc = skm.accuracy_score(val["target"], hat)
    assert df.loc["this run (val)", "accuracy"] == pytest.approx(run_acc)
    assert df.loc["tuned blog", "accuracy_minus_run"] == pytest.approx(0.8405 - run_acc)
    with pytest.raises(ValueError, match="threshold 0.5"):
        reference.compare_with_reference({"thresholds": {"youden": {"accuracy": 0.9}}})


def test_bad_tables_fail_with_a_named_reason():
    df = _table(50, seed=17)
    with pytest.raises(ValueError, match="missing column.*prob"):
        ev.summarize(df.drop(columns="prob"), thresholds=0.5, n_boot=10)
    with pytest.raises(ValueError, match=r"prob must hold finite probabilities"):
        ev.summarize(df.assign(prob=df["prob"] * 3), thresholds=0.5, n_boot=10)
    with pytest.raises(ValueError, match="one class"):
        ev.choose_thresholds(np.zeros(5), np.linspace(0, 1, 5))


def test_binary_summary_is_the_trainers_row_from_binary_metrics():
    """The per-epoch val row (metrics.csv) as the trainer wrote it before it moved here."""

    def before(y, p, t=0.5):
        pred = p >= t
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        auc = skm.roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")
        return {
            "auc": float(auc),
            "accuracy": float((pred == (y == 1)).mean()),
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
        }

    rng = np.random.default_rng(3)
    cases = [(rng.integers(0, 2, 50), rng.random(50)) for _ in range(20)]
    cases += [(np.zeros(5, int), rng.random(5)), (np.ones(4, int), np.zeros(4))]
    for y, p in cases:
        got, want = ev.binary_summary(y, p), before(y, p)
        assert got.keys() == want.keys()
        np.testing.assert_array_equal(list(got.values()), list(want.values()))
