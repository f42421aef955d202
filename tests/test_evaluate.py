"""Tests for pneumolib.evaluate: metrics vs sklearn, bootstrap, thresholds, subgroups, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pneumolib import evaluate as ev


def _scores(n: int, seed: int, shift: float = 0.0, decimals: int | None = None):
    """Labels (n,) with ~30% positives and probabilities that separate them moderately."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 2 * y - 1.0 + shift)))
    return y, (np.round(p, decimals) if decimals is not None else p)


def _table(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """A predictions table shaped like the real one, with some missing sex and age."""
    rng = np.random.default_rng(seed + 1000)
    y, p = _scores(n, seed, shift)
    age = rng.integers(2, 95, n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    sex = rng.choice(np.array(["M", "F", None], dtype=object), n, p=[0.48, 0.48, 0.04])
    return pd.DataFrame(
        {
            "patientId": [f"p{i}" for i in range(n)],
            "prob": p,
            "target": y,
            "view": rng.choice(["AP", "PA"], n),
            "sex": sex,
            "age": age,
        }
    )


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


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded():
    y, p = _scores(400, 4)
    a = ev.bootstrap_ci(y, p, 0.5, n_boot=200, seed=7)
    b = ev.bootstrap_ci(y, p, 0.5, n_boot=200, seed=7)
    c = ev.bootstrap_ci(y, p, 0.5, n_boot=200, seed=8)
    assert a == b
    assert a["roc_auc"] != c["roc_auc"]
    assert set(a) == set(ev.CI_METRICS)
    lo, hi = a["roc_auc"]
    assert lo < ev.binary_metrics(y, p)["roc_auc"] < hi


def test_vectorised_resamples_equal_sklearn_on_each_resample():
    y, p = _scores(200, 5, decimals=2)  # ties exercise the per-level counting
    thresholds = [0.25, 0.5]
    n_boot = 15
    dist = ev.bootstrap_distribution(y, p, thresholds, n_boot=n_boot, seed=11, chunk=1000)
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


def test_test_split_uses_val_thresholds_unchanged(tmp_path):
    val = _table(600, seed=10)
    test = _table(600, seed=11, shift=1.5)  # shifted scores: re-tuning would move thresholds
    thr = ev.choose_thresholds(val["target"], val["prob"])
    assert ev.choose_thresholds(test["target"], test["prob"])["youden"] != thr["youden"]
    m = ev.evaluate_predictions(val, test, "test", tmp_path, n_boot=50, figures=False)
    assert m["threshold_source"] == "val"
    assert {k: v["threshold"] for k, v in m["thresholds"].items()} == thr
    for name, t in thr.items():
        hat = test["prob"].to_numpy() >= t
        tn, fp, fn, tp = skm.confusion_matrix(test["target"], hat).ravel()
        got = m["thresholds"][name]
        assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    on_disk = json.loads((tmp_path / "metrics_test.json").read_text())
    assert on_disk["thresholds"]["youden"]["threshold"] == thr["youden"]
    # Without validation predictions, test gets 0.5 only: it never tunes on itself.
    alone = ev.evaluate_predictions(None, test, "test", tmp_path / "b", n_boot=20, figures=False)
    assert alone["threshold_source"] == "fixed" and list(alone["thresholds"]) == ["0.5"]


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
    sub = ev.subgroup_metrics(df, thr, n_boot=30)
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


# --------------------------------------------------------------------------- outputs
def test_evaluate_predictions_writes_json_and_figures(tmp_path):
    val, test = _table(300, seed=13), _table(300, seed=14)
    ev.evaluate_predictions(val, test, "test", tmp_path, n_boot=100)
    text = (tmp_path / "metrics_test.json").read_text()
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert on_disk["roc_auc"] == pytest.approx(skm.roc_auc_score(test["target"], test["prob"]))
    assert on_disk["split"] == "test" and len(on_disk["subgroups"]) > 0
    assert len(on_disk["roc_auc_ci"]) == 2 and len(on_disk["reliability"]) == 10
    kinds = ("roc", "pr", "confusion", "reliability", "prob_hist", "subgroups")
    for kind in kinds:
        png = tmp_path / "figures" / f"{kind}_test.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
    assert not list(tmp_path.rglob("*.tmp"))


def test_plot_functions_return_figures_on_given_axes():
    from matplotlib.figure import Figure

    y, p = _scores(200, 15)
    fig = Figure()
    ax = fig.add_subplot()
    assert ev.plot_roc(y, p, {"0.5": 0.5}, ax=ax) is fig
    assert len(ax.lines) == 3  # curve, chance line, one operating point


def test_compare_with_reference():
    val = _table(400, seed=16)
    m = ev.summarize(val, ev.choose_thresholds(val["target"], val["prob"]), n_boot=50)
    m["split"] = "val"
    df = ev.compare_with_reference(m)
    assert df.loc["course checkpoint", "accuracy"] == 0.8458
    assert df.loc["course checkpoint", "precision"] == 0.700
    assert df.loc["tuned blog", "accuracy"] == 0.8405
    assert df.loc["tuned blog", "precision"] == 0.7025
    hat = val["prob"] >= 0.5
    run_acc = skm.accuracy_score(val["target"], hat)
    assert df.loc["this run (val)", "accuracy"] == pytest.approx(run_acc)
    assert df.loc["tuned blog", "accuracy_minus_run"] == pytest.approx(0.8405 - run_acc)
    with pytest.raises(ValueError, match="threshold 0.5"):
        ev.compare_with_reference({"thresholds": {"youden": {"accuracy": 0.9}}})


def test_bad_tables_fail_with_a_named_reason():
    df = _table(50, seed=17)
    with pytest.raises(ValueError, match="missing column.*prob"):
        ev.summarize(df.drop(columns="prob"), 0.5, n_boot=10)
    with pytest.raises(ValueError, match=r"prob must hold finite probabilities"):
        ev.summarize(df.assign(prob=df["prob"] * 3), 0.5, n_boot=10)
    with pytest.raises(ValueError, match="one class"):
        ev.choose_thresholds(np.zeros(5), np.linspace(0, 1, 5))


# --------------------------------------------------------------------------- a whole run
PRED_COLUMNS = ["patientId", "prob", "target", "view", "sex", "age"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A demo run trained briefly on a 64 px cache (stratified train/val/test)."""
    from pneumolib.config import demo_config
    from pneumolib.preprocess import build_cache
    from pneumolib.synth import make_demo_data
    from pneumolib.train import fit

    d = tmp_path_factory.mktemp("evaluate_run")
    raw = make_demo_data(d / "raw", n=240, size=128, seed=3)
    cache = build_cache(raw, d / "cache", size=64, workers=1, progress=False)
    cfg = demo_config(
        d, cache=str(cache), out=str(d / "run"), workers=0, cache_size=64, image_size=64
    )
    fit(cfg.replace(epochs=3), progress=False)
    return {"run": d / "run", "cache": cache}


def _fresh_run(trained_run, tmp_path):
    """A copy of the trained run's checkpoint and config only (no predictions yet)."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "config.json"):
        shutil.copy(trained_run["run"] / name, run / name)
    return run


def _json(path):
    return json.loads(path.read_text())


def test_evaluate_run_val_writes_predictions_metrics_and_figures(trained_run, tmp_path, capsys):
    from pneumolib.cli import main
    from pneumolib.data import read_index

    run = _fresh_run(trained_run, tmp_path)
    assert main(["evaluate", "--run", str(run), "--split", "val", "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "youden" in out
    pred = pd.read_csv(run / "predictions_val.csv", dtype={"patientId": str})
    assert list(pred.columns) == PRED_COLUMNS
    index = read_index(trained_run["cache"])
    val = index[index["split"] == "val"]
    assert sorted(pred["patientId"]) == sorted(val["patientId"])
    truth = val.set_index("patientId").loc[pred["patientId"], "target"].to_numpy()
    assert np.array_equal(pred["target"].to_numpy(), truth)
    assert pred["prob"].between(0, 1).all() and pred["prob"].nunique() > 1
    saved = _json(run / "metrics_val.json")
    assert saved["roc_auc"] == pytest.approx(skm.roc_auc_score(pred["target"], pred["prob"]))
    assert saved["n_boot"] == 100 and saved["roc_auc_ci"][0] <= saved["roc_auc"]
    assert saved["split_rule"] == "stratified" and saved["reference_comparable"] is False
    assert [r["source"] for r in saved["reference"]][1:] == ["course checkpoint", "tuned blog"]
    assert "not like for like" in saved["reference_note"]
    for kind in ("roc", "pr", "confusion", "reliability", "prob_hist", "samples"):
        assert (run / "figures" / f"{kind}_val.png").stat().st_size > 1000, kind
    assert not list(run.rglob("*.tmp"))


def test_evaluate_run_test_uses_val_thresholds_unchanged(trained_run, tmp_path, capsys):
    run = _fresh_run(trained_run, tmp_path)
    ev.evaluate_run(
        run, "test", n_boot=50, workers=0, device="cpu", figures=False
    )  # val predicted first
    val_pred = pd.read_csv(run / "predictions_val.csv")
    chosen = ev.choose_thresholds(val_pred["target"], val_pred["prob"])
    test = _json(run / "metrics_test.json")
    assert {k: v["threshold"] for k, v in test["thresholds"].items()} == pytest.approx(chosen)
    assert test["threshold_source"] == "val" and "reference" not in test
    test_pred = pd.read_csv(run / "predictions_test.csv")
    assert list(test_pred.columns) == PRED_COLUMNS
    assert ev.choose_thresholds(test_pred["target"], test_pred["prob"]) != chosen
    ev.evaluate_run(run, "val", n_boot=50, workers=0, device="cpu", figures=False)
    val = _json(run / "metrics_val.json")
    for name, t in test["thresholds"].items():
        assert val["thresholds"][name]["threshold"] == t["threshold"]
    # A second test evaluation reuses the val predictions of the same checkpoint...
    capsys.readouterr()
    ev.evaluate_run(run, "test", n_boot=50, workers=0, device="cpu", figures=False)
    assert "reusing predictions_val.csv" in capsys.readouterr().out
    # ...but not ones whose sidecar names another checkpoint.
    meta = run / "predictions_val.meta.json"
    meta.write_text(meta.read_text().replace(test["checkpoint"]["sha256"], "0" * 64))
    ev.evaluate_run(run, "test", n_boot=50, workers=0, device="cpu", figures=False)
    assert "reusing" not in capsys.readouterr().out
    assert test["checkpoint"]["sha256"] in meta.read_text()


def test_evaluate_run_tta_close_to_plain(trained_run, tmp_path):
    run = _fresh_run(trained_run, tmp_path)
    kw = {"n_boot": 20, "workers": 0, "device": "cpu", "figures": False}
    plain = ev.evaluate_run(run, "val", **kw)
    tta = ev.evaluate_run(run, "val", tta=True, **kw)
    a = pd.read_csv(run / "predictions_val.csv")
    b = pd.read_csv(run / "predictions_val_tta.csv")
    assert list(b.columns) == PRED_COLUMNS and (a["patientId"] == b["patientId"]).all()
    assert b["prob"].between(0, 1).all()
    assert not np.allclose(a["prob"], b["prob"])  # the variants did change something
    assert np.corrcoef(a["prob"], b["prob"])[0, 1] > 0.9
    assert (
        tta["tta"] is True and len(tta["tta_variants"]) == 7 and "hflip" not in tta["tta_variants"]
    )
    assert plain["tta"] is False and (run / "metrics_val_tta.json").is_file()
    assert not (run / "figures").exists()  # figures=False


def test_tta_affines_identity_is_the_eval_resize():
    from pneumolib.augment import eval_affines

    mats = ev.tta_affines(64, 48)
    np.testing.assert_allclose(mats["identity"], eval_affines(1, 64, 48)[0])
    assert "hflip" not in mats and "hflip" in ev.tta_affines(64, 48, hflip=True)
    # x+4% moves every output pixel 4% of the side to the right.
    np.testing.assert_allclose(mats["x+4%"][:, 2] - mats["identity"][:, 2], [0.04 * 48, 0])
    assert mats["zoom 1.05"][0, 0] == pytest.approx(1.05 * 48 / 64)


def test_evaluate_run_bad_inputs(trained_run, tmp_path, capsys):
    from pneumolib.cli import main

    assert main(["evaluate", "--run", str(tmp_path / "nowhere")]) == 2
    assert "best.pt" in capsys.readouterr().err
    run = _fresh_run(trained_run, tmp_path)
    with pytest.raises(ValueError, match="split"):
        ev.evaluate_run(run, "train")
    with pytest.raises(FileNotFoundError, match="index.csv"):
        ev.evaluate_run(run, "val", cache=tmp_path / "no_cache")


def test_pick_samples_puts_the_most_confident_mistakes_first():
    pred = pd.DataFrame(
        {
            "prob": [0.95, 0.60, 0.05, 0.40, 0.90, 0.10, 0.80, 0.20],
            "target": [0, 0, 1, 1, 1, 0, 1, 0],
        }
    )  # FP: 0 (0.95), 1 (0.60); FN: 2 (0.05), 3 (0.40); the rest right
    idx = ev.pick_samples(pred, 0.5, n=6, seed=0)
    assert list(idx[:3]) == [0, 2, 1]  # FP 0.95, FN 0.05, FP 0.60
    assert len(idx) == 6 and len(set(idx)) == 6
    assert set(idx[3:]) <= {4, 5, 6, 7}  # then correct calls
    assert list(ev.pick_samples(pred, 0.5, n=6, seed=0)) == list(idx)
    assert len(ev.pick_samples(pred, 0.5, n=20)) == len(pred)
    fig = ev.plot_samples(np.zeros((3, 8, 8), np.uint8), pred.iloc[idx[:3]], 0.5, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and all("WRONG" in t for t in titles)
