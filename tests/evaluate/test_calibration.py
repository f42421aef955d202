"""pneumolib.evaluate.calibration on hand-made logits: the prior correction in closed form, each
fit against an independent optimum (a grid, scikit-learn), ranking kept, the JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from pneumolib.base.errors import RunError, UsageError
from pneumolib.base.metrics import (
    bootstrap_indices,
    expected_calibration_error,
    reliability,
)
from pneumolib.evaluate import calibration as cal


def _logits(n: int = 400, seed: int = 0, scale: float = 2.5):
    """Labels (n,) drawn from true log-odds l (about 25% positive) and the logits (n, 1) a
    balanced-batch model would give, l - logit(prevalence), made over-confident by `scale`."""
    rng = np.random.default_rng(seed)
    true = -1.6 + 1.5 * rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true))).astype(int)
    return y, (scale * (true - cal.logit(y.mean())))[:, None]


def test_prior_shift_closed_form():
    pi = 0.2
    logit = np.log(pi / (1 - pi))
    # Balanced batches, no extra weight: trained at odds 1:1, so add logit(pi).
    assert cal.prior_shift(train_prevalence=pi, balanced=True, loss_weights=[1.0]) == (
        pytest.approx([logit])
    )
    # pos_weight w multiplies the positive likelihood: the logit rose by log w.
    assert cal.prior_shift(train_prevalence=pi, balanced=False, loss_weights=[3.0]) == (
        pytest.approx([-np.log(3.0)])
    )
    # The default weight negatives / positives is the same shift as balanced batches...
    w = (1 - pi) / pi
    assert cal.prior_shift(train_prevalence=pi, balanced=False, loss_weights=[w]) == (
        pytest.approx([logit])
    )
    # ...and both at once add up.
    both = cal.prior_shift(train_prevalence=pi, balanced=True, loss_weights=[2.0])
    assert both == pytest.approx([logit - np.log(2.0)])
    # Three classes, balanced: log(K pi_k) per logit; the softmax then gives back the priors.
    pis = np.array([0.5, 0.3, 0.2])
    s = cal.prior_shift(train_prevalence=pis, balanced=True, loss_weights=[1.0, 1.0, 1.0])
    np.testing.assert_allclose(s, np.log(3 * pis))
    np.testing.assert_allclose(cal.activation(np.zeros((1, 3)) + s)[0], pis)
    # The trainer's default per-class weights N / (K n_k) give the same probabilities.
    t = cal.prior_shift(train_prevalence=pis, balanced=False, loss_weights=1 / (3 * pis))
    np.testing.assert_allclose(cal.activation(t[None]), cal.activation(s[None]))


def test_prior_shift_restores_the_true_probability():
    """Logits trained as if positives were half the patients, corrected, give the true
    P(positive) back: logit(q) + logit(pi) - logit(0.5) maps 0.5 -> pi exactly."""
    pi = 0.24
    s = cal.prior_shift(train_prevalence=pi, balanced=True, loss_weights=[1.0])
    assert cal.activation(np.array([[0.0]]) + s)[0, 0] == pytest.approx(pi)


def test_temperature_equals_a_fine_grid_minimum():
    y, z = _logits()
    t = cal.fit_temperature(z, y, shift=[-1.1])
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 2001))
    losses = [cal.nll(z / g - 1.1, y) for g in grid]
    best = grid[int(np.argmin(losses))]
    step = grid[1] / grid[0]
    assert best / step <= t <= best * step  # within one grid step of the grid's minimum
    assert cal.nll(z / t - 1.1, y) <= min(losses) + 1e-12
    assert t > 1.5  # over-confident logits: the fit cools them


def test_temperature_three_class_matches_a_grid():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    z = 3.0 * (rng.normal(size=(300, 3)) + 1.2 * np.eye(3)[y])
    t = cal.fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 2001))
    best = grid[int(np.argmin([cal.nll(z / g, y) for g in grid]))]
    assert t == pytest.approx(best, rel=2e-3)


def test_platt_equals_sklearn_logistic_regression():
    y, z = _logits(seed=2)
    a, b = cal.fit_platt(z[:, 0], y)
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(z, y)
    assert a == pytest.approx(lr.coef_[0, 0], rel=1e-4)
    assert b == pytest.approx(lr.intercept_[0], rel=1e-4, abs=1e-5)
    c = cal.fit_calibration(z, y, shift=[0.0], method="platt")
    np.testing.assert_allclose(c.apply(z)[:, 0], lr.predict_proba(z)[:, 1], atol=1e-6)


def test_isotonic_follows_sklearn_and_keeps_ranking():
    y, z = _logits(seed=3)
    c = cal.fit_calibration(z, y, shift=[0.0], method="isotonic")
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z[:, 0], y)
    np.testing.assert_allclose(c.apply(z)[:, 0], iso.predict(z[:, 0]), atol=1e-5)
    p = c.pneumonia(np.sort(z, axis=0))
    assert np.all(np.diff(p) > 0)  # strictly increasing: the steps are tilted


@pytest.mark.parametrize("method", cal.METHODS)
def test_calibration_never_changes_auc(method):
    y, z = _logits(seed=4)
    shift = cal.prior_shift(train_prevalence=0.25, balanced=True, loss_weights=[1.0])
    c = cal.fit_calibration(z, y, shift=shift, method=method)
    raw = cal.activation(z)[:, 0]
    assert skm.roc_auc_score(y, c.pneumonia(z)) == skm.roc_auc_score(y, raw)
    if method != "none":  # the point of it: the fitted probabilities are better
        assert cal.nll(cal.logit(c.pneumonia(z))[:, None], y) < cal.nll(z, y)


def test_corrected_and_fitted_probabilities_match_the_prevalence():
    y, z = _logits(n=2000, seed=5, scale=2.5)
    shift = cal.prior_shift(train_prevalence=y.mean(), balanced=True, loss_weights=[1.0])
    c = cal.fit_calibration(z, y, shift=shift)
    p = c.pneumonia(z)
    assert c.temperature == pytest.approx(2.5, rel=0.1)  # the over-confidence, found
    np.testing.assert_allclose(p, cal.activation(z / c.temperature + shift)[:, 0])
    raw = cal.activation(z)[:, 0]
    assert raw.mean() > y.mean() + 0.1  # the hand-made logits run high...
    assert p.mean() == pytest.approx(y.mean(), abs=0.03)  # ...the calibrated ones do not
    ece = {k: expected_calibration_error(reliability(y, v)) for k, v in (("raw", raw), ("p", p))}
    assert ece["p"] < ece["raw"] / 3


def test_json_round_trip_and_operating_points(tmp_path):
    y, z = _logits(seed=6)
    for method in cal.METHODS:
        c = cal.fit_calibration(
            z,
            y,
            shift=[-1.1],
            method=method,
            operating_points={"sens90": 0.12, "youden": 0.3, "best_f1": 0.35, "0.5": 0.5},
            checkpoint_sha256="ab" * 32,
        )
        cal.write_calibration(tmp_path, c)
        back = cal.read_calibration(tmp_path)
        assert back == c
        np.testing.assert_array_equal(back.apply(z), c.apply(z))
    assert back.threshold("youden") == 0.3 and back.threshold("0.25") == 0.25
    with pytest.raises(UsageError, match="sens90, youden|best_f1"):
        back.threshold("sens95")
    assert cal.read_calibration(tmp_path / "none") is None
    (tmp_path / "calibration.json").write_text("{")
    with pytest.raises(RunError, match="calibration.json: unreadable"):
        cal.read_calibration(tmp_path)


def test_platt_and_isotonic_refuse_three_classes():
    with pytest.raises(UsageError, match="binary"):
        cal.fit_calibration(np.zeros((4, 3)), [0, 1, 2, 0], shift=[0, 0, 0], method="platt")
    with pytest.raises(UsageError, match="choose one of"):
        cal.fit_calibration(np.zeros((4, 1)), [0, 1, 1, 0], shift=[0], method="beta")


def test_calibration_figures_bootstrap_matches_the_metrics():
    """Each resample's ECE, Brier and NLL equal the plain definitions on that resample."""
    y, z = _logits(n=120, seed=7)
    p = cal.activation(z)[:, 0]
    fig = cal.calibration_figures(y, p, n_boot=200, seed=3)
    assert fig["ece"] == pytest.approx(expected_calibration_error(reliability(y, p)))
    assert fig["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert fig["nll"] == pytest.approx(cal.nll(z, y))
    for k in cal.FIGURES:
        lo, hi = fig[f"{k}_ci"]
        assert lo < fig[k] < hi, k
    # The interval's resamples are metrics.bootstrap_indices'; check one against the slow way.
    idx = bootstrap_indices(len(y), 200, 3)[17]
    one = cal.calibration_figures(y[idx], p[idx], n_boot=0)
    ece = expected_calibration_error(reliability(y[idx], p[idx]))
    assert one["ece"] == pytest.approx(ece) and one["ece_ci"] == [None, None]


def test_cli_names_the_operating_points_and_the_default():
    """The parser spells the choices out (it stays light: no scipy at start-up); this keeps
    them the calibration module's."""
    from pneumolib.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command" or a.choices)
    predict = sub.choices["predict"]
    point = next(a for a in predict._actions if a.dest == "operating_point")
    assert point.default == cal.DEFAULT_OPERATING_POINT
    assert all(name in point.help for name in cal.OPERATING_POINTS)
    assert f"{cal.DEFAULT_OPERATING_POINT} (default" in point.help
    method = next(a for a in sub.choices["evaluate"]._actions if a.dest == "calibration")
    assert tuple(method.choices) == cal.METHODS and method.default is None
    assert f"default: {cal.default_method(1)} for the binary task" in method.help
    assert f"{cal.default_method(3)} for three-class" in method.help
