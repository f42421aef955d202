"""Calibration: a run's scores turned into risks, fitted on val and stored in RUN/calibration.json.

Two steps, in this order (`fit_calibration`):

1. The prior correction (`prior_shift`). Class-balanced batches train the network as if every
   class were equally common, and a loss weight w on a class multiplies its likelihood; both
   add a known log-odds to what the network estimates. Adding `prior_shift` undoes it with the
   training prevalence, in closed form; it is fixed before anything is fitted.
2. A fitted map, minimising the val negative log-likelihood with the correction in place: one
   temperature T (`fit_temperature`): p = sigmoid(z / T + shift), or the softmax of z / T +
   shift for three classes (T rescales the network's own, over- or under-confident, log-odds
   before the prior is put right; dividing the corrected logit by T instead would scale the
   correction too). Or by name Platt's a, b (`fit_platt`, binary; sigmoid(a (z + shift) + b),
   which an affine map of z absorbs) or isotonic regression on z + shift (`fit_isotonic`).

Every map is strictly increasing in the logit, so the ranking of patients, and the AUC, do
not change. Torch-free (numpy, scipy, scikit-learn): the card and `predict` read it alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.isotonic import IsotonicRegression

from pneumolib.base.errors import RunError, UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.metrics import (
    bootstrap_indices,
    check_arrays,
    expected_calibration_error,
    percentile_ci,
    reliability,
)
from pneumolib.base.rundir import calibration_path

METHODS = ("temperature", "platt", "isotonic", "none")


def default_method(n_outputs: int) -> str:
    """`evaluate`'s method for a head of `n_outputs` logits: Platt for one logit (a scale and
    a bias: the network's bias is not the closed-form one. On the demo over 3 training seeds,
    test ECE raw 0.136 / 0.257 / 0.679 became 0.095 / 0.070 / 0.092 with Platt and 0.066 /
    0.117 / 0.173 with a temperature alone; benchmarks/calibration_seeds.py), the temperature
    for three (Platt is binary)."""
    return "platt" if n_outputs == 1 else "temperature"


# Operating points chosen on the calibrated val probability (`base.metrics.choose_thresholds`,
# the sensitivity target 0.90 named "sens90"); predict's default is the first.
OPERATING_POINTS = ("sens90", "youden", "best_f1", "0.5")
DEFAULT_OPERATING_POINT = OPERATING_POINTS[0]
_P_MIN = 1e-15  # probabilities are clipped to [_P_MIN, 1 - _P_MIN] before a logit or a log
_LOG_T = (np.log(1e-2), np.log(1e2))  # the temperature is searched in [0.01, 100]
_ISO_TIE = 1e-6  # isotonic steps are tilted by this much of the sigmoid: ranking kept


# --------------------------------------------------------------------------- logits <-> probs
def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [1e-15, 1 - 1e-15], float64."""
    p = np.clip(np.asarray(p, dtype=np.float64), _P_MIN, 1 - _P_MIN)
    return np.log(p) - np.log1p(-p)


def activation(logits: Any) -> np.ndarray:
    """Logits (N, K) -> probabilities (N, K) in float64: sigmoid for K = 1, softmax else."""
    z = np.asarray(logits, dtype=np.float64)
    return expit(z) if z.shape[1] == 1 else softmax(z, axis=1)


def raw_logits(probs: Any) -> np.ndarray:
    """The inverse of `activation`: probabilities (N, K) -> logits (N, K) (for K > 1 the log,
    which the softmax maps back to the same probabilities)."""
    p = np.asarray(probs, dtype=np.float64)
    return logit(p) if p.shape[1] == 1 else np.log(np.clip(p, _P_MIN, 1.0))


def nll(logits: Any, y: Any) -> float:
    """Mean negative log-likelihood of targets y (N,) (0/1 for one logit, class codes for K)
    under logits (N, K)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if z.shape[1] == 1:
        s = z[:, 0]
        return float(-np.mean(np.where(y == 1, log_expit(s), log_expit(-s))))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))


# --------------------------------------------------------------------------- the fits
def prior_shift(
    *, train_prevalence: float | Sequence[float] | np.ndarray, balanced: bool, loss_weights: Any
) -> np.ndarray:
    """The log-odds to add to each logit (K,) that undoes what training added.

    `train_prevalence`: P(positive) on train for one logit, or each class's share (K,) in
    logit order; `balanced`: class-balanced batches (trained as if classes were equally common:
    they added logit(0.5) - logit(pi), or log(1/K) - log(pi_k)); `loss_weights`: the loss's
    class weights as the trainer computed them (`Task.class_weights`; a weight w added log w).
    """
    w = np.asarray(loss_weights, dtype=np.float64)
    pi = np.asarray(train_prevalence, dtype=np.float64)
    if pi.ndim == 0:  # one logit: the log-odds of the positive class
        return np.array([(logit(pi) if balanced else 0.0) - np.log(w[0])])
    sampling = np.log(np.clip(pi, _P_MIN, 1.0) * len(pi)) if balanced else np.zeros(len(pi))
    return sampling - np.log(w)


def fit_temperature(logits: Any, y: Any, *, shift: Any = 0.0) -> float:
    """The temperature T > 0 minimising `nll(logits / T + shift, y)`; logits (N, K), y (N,),
    `shift` (K,) the prior correction. Searched over log T in [log 0.01, log 100] (bounded
    Brent search)."""
    z, b = np.asarray(logits, dtype=np.float64), np.asarray(shift, dtype=np.float64)
    res = minimize_scalar(
        lambda u: nll(z / np.exp(u) + b, y),
        bounds=_LOG_T,
        method="bounded",
        options={"xatol": 1e-9},
    )
    return float(np.exp(res.x))


def fit_platt(x: Any, y: Any) -> tuple[float, float]:
    """Platt scaling: (a, b) of p = sigmoid(a x + b) minimising the NLL of y (N,) 0/1 on the
    scores x (N,), unregularised (exact gradient, BFGS)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * x + ab[1]
        f = -np.mean(y * log_expit(s) + (1 - y) * log_expit(-s))
        r = expit(s) - y  # d loss / d s per case
        return float(f), np.array([np.mean(r * x), np.mean(r)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="BFGS", options={"gtol": 1e-10})
    return float(res.x[0]), float(res.x[1])


def fit_isotonic(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of y (N,) 0/1 on scores x (N,) -> its knots (xs, ps), as
    scikit-learn's `IsotonicRegression(out_of_bounds="clip")` interpolates them."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    return iso.X_thresholds_.astype(np.float64), iso.y_thresholds_.astype(np.float64)


# --------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Calibration:
    """A fitted calibration (`fit_calibration`): `apply` maps logits (N, K) to calibrated
    probabilities (N, K). Written as RUN/calibration.json (`to_json`, `write_calibration`)."""

    method: str  # one of METHODS
    shift: tuple[float, ...]  # (K,) prior correction added to the logits first
    temperature: float = 1.0  # "temperature": the logits are divided by it, then shifted
    platt: tuple[float, float] = (1.0, 0.0)  # "platt": a, b of sigmoid(a x + b)
    isotonic: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # "isotonic": knots
    operating_points: Mapping[str, float] = field(default_factory=dict)  # OPERATING_POINTS
    train_prevalence: float | None = None  # P(pneumonia) on train
    val_prevalence: float | None = None  # P(pneumonia) on val, where it was fitted
    fitted_on: Mapping[str, Any] = field(default_factory=dict)  # val n and figures
    checkpoint_sha256: str | None = None  # the checkpoint whose logits it was fitted on

    def apply(self, logits: Any) -> np.ndarray:
        """Logits (N, K) -> calibrated probabilities (N, K), float64."""
        z, b = np.asarray(logits, dtype=np.float64), np.asarray(self.shift)
        if self.method in ("temperature", "none"):
            return activation(z / (self.temperature if self.method == "temperature" else 1.0) + b)
        x = z + b
        if self.method == "platt":
            return expit(self.platt[0] * x + self.platt[1])
        xs, ps = (np.asarray(v) for v in self.isotonic)
        iso = np.interp(x[:, 0], xs, ps)  # clipped at the ends, as scikit-learn's "clip"
        return ((1 - _ISO_TIE) * iso + _ISO_TIE * expit(x[:, 0]))[:, None]

    def pneumonia(self, logits: Any) -> np.ndarray:
        """Logits (N, K) -> calibrated P(pneumonia) (N,): the last column."""
        return self.apply(logits)[:, -1]

    def threshold(self, name: str) -> float:
        """The probability threshold of an operating point: a name in `operating_points`
        (`sens90`, `youden`, `best_f1`, `0.5`) or a number in [0, 1]."""
        if name in self.operating_points:
            return float(self.operating_points[name])
        return as_threshold(name, sorted(self.operating_points))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        d = json.loads(text)
        d["shift"] = tuple(d["shift"])
        d["platt"] = tuple(d["platt"])
        d["isotonic"] = tuple(tuple(v) for v in d["isotonic"])
        return cls(**d)


def as_threshold(name: str, names: Sequence[str]) -> float:
    """A number in [0, 1] given as text, else a one-line UsageError listing `names`."""
    try:
        value = float(name)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise UsageError(
            f"--operating-point {name!r}: choose one of {', '.join(names)} or a number in [0, 1]"
        )
    return value


def fit_calibration(
    logits: Any,
    y: Any,
    *,
    shift: Sequence[float] | np.ndarray,
    method: str = "temperature",
    **record: Any,
) -> Calibration:
    """Fit `method` on val logits (N, K) and targets y (N,) (0/1 for one logit, class codes
    for three) with the prior correction `shift` (K,) in place (see `Calibration.apply`).
    `record`: the other `Calibration` fields (operating points, prevalences, figures, hash)."""
    if method not in METHODS:
        raise UsageError(f"calibration {method!r}: choose one of {', '.join(METHODS)}")
    raw = np.asarray(logits, dtype=np.float64)
    z = raw + np.asarray(shift, dtype=np.float64)
    y = np.asarray(y)
    if method in ("platt", "isotonic") and z.shape[1] != 1:
        raise UsageError(f"calibration {method!r} is for the binary task; use 'temperature'")
    base = Calibration(method=method, shift=tuple(float(s) for s in shift), **record)
    if method == "temperature":
        return replace(base, temperature=fit_temperature(raw, y, shift=shift))
    if method == "platt":
        return replace(base, platt=fit_platt(z[:, 0], y))
    if method == "isotonic":
        xs, ps = fit_isotonic(z[:, 0], y)
        return replace(base, isotonic=(tuple(xs.tolist()), tuple(ps.tolist())))
    return base


# --------------------------------------------------------------------------- the figures
FIGURES = ("ece", "brier", "nll")


def calibration_figures(
    y: Any, p: Any, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, n_bins: int = 10
) -> dict[str, Any]:
    """ECE (`n_bins` equal-width bins, as `metrics.reliability`), Brier and NLL of P(pneumonia)
    p (N,) against y (N,) 0/1, each with a percentile bootstrap interval (`<name>_ci`) over the
    resamples of `metrics.bootstrap_indices(N, n_boot, seed)`, and the mean probability."""
    y, p = check_arrays(y, p)
    q = np.clip(p, _P_MIN, 1 - _P_MIN)
    per_case = {"brier": (p - y) ** 2, "nll": -np.where(y == 1, np.log(q), np.log1p(-q))}
    out: dict[str, Any] = {"ece": expected_calibration_error(reliability(y, p, n_bins))}
    out |= {k: float(v.mean()) for k, v in per_case.items()}
    out["mean_prob"] = float(p.mean())
    if n_boot <= 0:
        return out | {f"{k}_ci": [None, None] for k in FIGURES}
    idx = bootstrap_indices(len(y), n_boot, seed)  # (R, N), the rows every other CI uses
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)  # as `reliability`
    key = bins[idx] + n_bins * np.arange(n_boot)[:, None]  # (R, N): resample r, bin b
    size = n_boot * n_bins
    gap = np.bincount(key.ravel(), weights=(y - p)[idx].ravel(), minlength=size)
    # ECE = sum over bins of count x |observed - mean predicted| / N = sum |sum(y - p)| / N
    dist = {"ece": np.abs(gap.reshape(n_boot, n_bins)).sum(1) / len(y)}
    dist |= {k: v[idx].mean(1) for k, v in per_case.items()}
    for k in FIGURES:
        out[f"{k}_ci"] = [float(b) for b in percentile_ci(dist[k], alpha)]
    return out


def calibration_block(
    y: Any, p_raw: Any, p: Any, *, method: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """metrics_<split>.json's `calibration`: ECE, Brier and NLL (each with its 95% CI) of the
    raw (`p_raw`) and the calibrated (`p`) P(pneumonia), both (N,), and the prevalence."""
    y = np.asarray(y)
    return {
        "method": method,
        "prevalence": float(np.mean(y)),
        "raw": calibration_figures(y, p_raw, n_boot=n_boot, seed=seed),
        "calibrated": calibration_figures(y, p, n_boot=n_boot, seed=seed),
    }


# --------------------------------------------------------------------------- the file
def write_calibration(run: str | Path, cal: Calibration) -> Path:
    """RUN/calibration.json, written atomically."""
    path = calibration_path(run)
    atomic_write(path, cal.to_json())
    return path


def read_calibration(run: str | Path) -> Calibration | None:
    """RUN/calibration.json, or None when the run has none (made before calibration, or never
    evaluated). A damaged file is a one-line RunError saying how to rebuild it."""
    path = calibration_path(run)
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(
            f"{path}: unreadable ({type(e).__name__}); delete it and run "
            f"`python -m pneumolib evaluate --run {Path(run)}` to fit it again"
        ) from None
