"""Figures of an evaluation: ROC and PR curves with the operating points, confusion matrices
(counts and normalised), reliability diagram, probability histograms per class, subgroup bars
with CIs, and a grid of sample predictions with the most confident mistakes first.

Each `plot_*` returns a matplotlib Figure (drawn on `ax` when given) and writes it to `out`
when given; `write_figures` draws the whole set for one split (`evaluate.evaluate_run`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn import metrics as skm

from pneumolib.base.files import atomic_write
from pneumolib.base.metrics import (
    CLASS_NAMES,
    as_thresholds,
    binary_metrics,
    brier,
    check_arrays,
    check_predictions,
    expected_calibration_error,
    reliability,
)
from pneumolib.base.plots import class_colour, figure_axes
from pneumolib.base.rundir import figures_dir
from pneumolib.data.labels import open_images, read_index

SAMPLES_THRESHOLD = "youden"  # operating point the sample grid marks right/wrong (else 0.5)


# --------------------------------------------------------------------------- figures
def _save(fig: Any, out: str | Path | None) -> Any:
    """Write the PNG atomically (temporary file, then rename) when `out` is given."""
    if out is not None:
        atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=110))
    return fig


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _mark_points(ax: Any, y: np.ndarray, p: np.ndarray, thresholds, xy: tuple[str, str]) -> None:
    """Each threshold's operating point (x, y = metrics named `xy`) as a hollow marker of its
    own shape and colour, larger for earlier thresholds, so points that coincide stay visible
    as nested outlines; the legend gives each point's coordinates and names coinciding ones."""
    seen: dict[tuple[float, float], str] = {}
    for i, (name, t) in enumerate((thresholds or {}).items()):
        m = binary_metrics(y, p, t)
        pt = (1 - m["specificity"] if xy[0] == "fpr" else m[xy[0]], m[xy[1]])
        label = f"{name} (t={t:.4g}): ({pt[0]:.2f}, {pt[1]:.2f})"
        key = (round(pt[0], 9), round(pt[1], 9))
        if key in seen:
            label += f", same as {seen[key]}"
        seen.setdefault(key, name)
        ms = max(14 - 2.5 * i, 5)
        style = dict(ms=ms, mfc="none", mew=1.8, color=f"C{i + 1}", ls="none", label=label)
        ax.plot(*pt, _MARKERS[i % len(_MARKERS)], **style)


def _one_class(y: np.ndarray, ax: Any) -> bool:
    """Curves need both classes; say so on the axes instead of failing the whole report."""
    if y.min() == y.max():
        ax.text(0.5, 0.5, "needs both classes", ha="center", transform=ax.transAxes)
        return True
    return False


def plot_roc(y: Any, p: Any, *, thresholds: Mapping[str, float] | None = None, ax=None, out=None):
    """ROC curve with each threshold's operating point marked; returns the Figure."""
    y, p = check_arrays(y, p)
    fig, ax = figure_axes(ax)
    if _one_class(y, ax):
        return _save(fig, out)
    fpr, tpr, _ = skm.roc_curve(y, p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {skm.roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    _mark_points(ax, y, p, thresholds, ("fpr", "sensitivity"))
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC curve")
    ax.legend(loc="lower right", fontsize=7, title="operating point: (FPR, TPR)", title_fontsize=7)
    return _save(fig, out)


def plot_pr(y: Any, p: Any, *, thresholds: Mapping[str, float] | None = None, ax=None, out=None):
    """Precision-recall curve with operating points and the prevalence baseline."""
    y, p = check_arrays(y, p)
    fig, ax = figure_axes(ax)
    if _one_class(y, ax):
        return _save(fig, out)
    prec, rec, _ = skm.precision_recall_curve(y, p)
    ax.plot(rec, prec, lw=2, label=f"PR (AP = {skm.average_precision_score(y, p):.3f})")
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    _mark_points(ax, y, p, thresholds, ("recall", "precision"))
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall curve")
    ax.set_ylim(0, 1.02)
    ax.legend(
        loc="lower left", fontsize=7, title="operating point: (recall, precision)", title_fontsize=7
    )
    return _save(fig, out)


def plot_confusion(
    y: Any,
    p: Any,
    *,
    threshold: float = 0.5,
    normalize: bool = False,
    ax=None,
    out=None,
    title=None,
):
    """2x2 confusion matrix (rows: truth, columns: prediction), counts or row fractions."""
    m = binary_metrics(y, p, threshold)
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], dtype=np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = figure_axes(ax, (3.6, 3.2))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else max(cm.max(), 1))
    for i in range(2):
        for j in range(2):
            text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            dark = cm[i, j] > (0.5 if normalize else cm.max() / 2)
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks([0, 1], CLASS_NAMES, fontsize=8)
    ax.set_yticks([0, 1], CLASS_NAMES, fontsize=8, rotation=90, va="center")
    ax.set(xlabel="predicted", ylabel="true")
    kind = "row fractions" if normalize else "counts"
    ax.set_title(title or f"t = {threshold:.3f} ({kind})", fontsize=9)
    return _save(fig, out)


def plot_confusion_grid(y: Any, p: Any, thresholds: Mapping[str, float], out=None):
    """Confusion matrices, one column per threshold: counts on top, row fractions below."""
    thr = as_thresholds(thresholds)
    fig = Figure(figsize=(3.3 * len(thr), 6.2), layout="constrained")
    axes = fig.subplots(2, len(thr), squeeze=False)
    for j, (name, t) in enumerate(thr.items()):
        plot_confusion(
            y, p, threshold=t, normalize=False, ax=axes[0, j], title=f"{name} (t={t:.3f}) counts"
        )
        plot_confusion(
            y,
            p,
            threshold=t,
            normalize=True,
            ax=axes[1, j],
            title=f"{name} (t={t:.3f}) row fractions",
        )
    return _save(fig, out)


def reliability_bins(n: int) -> int:
    """Equal-count bins for a reliability diagram of n cases: about 10 cases a bin, 2 to 10."""
    return int(np.clip(n // 10, 2, 10))


def wilson_interval(k: Any, n: Any, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (95% for z = 1.96) of k successes in n trials, arrays (G,) each:
    a bin's observed frequency with its uncertainty, sensible at 0 and n (unlike p +- z se)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def _reliability_curve(ax: Any, y: np.ndarray, p: np.ndarray, bins: int, **style: Any) -> int:
    """One reliability curve on `ax` (equal-count bins, Wilson 95% bars) -> bins drawn."""
    table = reliability(y, p, bins, strategy="quantile")
    used = table[table["count"] > 0]
    lo, hi = wilson_interval(used["observed"] * used["count"], used["count"])
    err = np.clip([used["observed"] - lo, hi - used["observed"]], 0, None)
    ax.errorbar(used["mean_pred"], used["observed"], yerr=err, fmt="o-", lw=2, capsize=3, **style)
    return len(used)


def plot_reliability(
    y: Any, p: Any, *, raw: Any = None, n_bins: int | None = None, ax=None, out=None
):
    """Reliability diagram: observed frequency (with its Wilson 95% interval) against mean
    predicted probability in equal-count bins (`reliability_bins(n)` unless `n_bins`; a
    confident model would leave equal-width bins nearly all empty), over the histogram of the
    predictions. With `raw` (the uncalibrated probabilities (N,)), both curves: before and
    after calibration. The title's ECE uses the summary's 10 equal-width bins."""
    y, p = check_arrays(y, p)
    wanted = n_bins or reliability_bins(len(y))
    fig, ax = figure_axes(ax)
    ax.hist(p, bins=np.linspace(0, 1, 21), weights=np.full(len(p), 1 / len(p)),
            color="lightgrey", label="share of cases")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ece = expected_calibration_error(reliability(y, p))
    title = f"Brier {brier(y, p):.3f}, ECE {ece:.3f}"
    if raw is not None:
        _, r = check_arrays(y, raw, "y", "raw")
        _reliability_curve(ax, y, r, wanted, color="tab:orange", alpha=0.8, label="raw")
        ece_raw = expected_calibration_error(reliability(y, r))
        title = f"ECE {ece_raw:.3f} raw -> {ece:.3f} calibrated"
    label = "model" if raw is None else "calibrated"
    k = _reliability_curve(ax, y, p, wanted, color="tab:blue", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability")
    ax.set(ylabel="observed frequency of pneumonia (95% CI)")
    ax.set_title(f"Reliability ({title})", fontsize=9 if raw is not None else None)
    note = f"{k} equal-count bins, ~{len(y) // max(k, 1)} cases each"
    why = [f"only {len(y)} cases"] if n_bins is None and wanted < 5 else []
    why += ["tied probabilities share a bin"] if k < wanted else []
    note += f"\n(few bins: {'; '.join(why)})" if why else ""
    ax.text(0.98, 0.03, note, ha="right", va="bottom", fontsize=7, transform=ax.transAxes)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out)


def plot_prob_hist(
    y: Any,
    p: Any,
    *,
    thresholds: Mapping[str, float] | None = None,
    bins: int = 30,
    ax=None,
    out=None,
):
    """Histograms of predicted probability for each true class (`core.plots.CLASS_COLOURS`),
    thresholds as vertical lines; the legend sits outside the axes, clear of the bars."""
    y, p = check_arrays(y, p)
    fig, ax = figure_axes(ax, (7, 4))
    edges = np.linspace(0, 1, bins + 1)
    for cls in (0, 1):
        label, colour = f"true {CLASS_NAMES[cls]}", class_colour(CLASS_NAMES[cls])
        ax.hist(p[y == cls], bins=edges, alpha=0.5, color=colour, label=label)
    for (name, t), ls in zip((thresholds or {}).items(), ("-", "--", ":", "-.") * 3, strict=False):
        ax.axvline(t, c="k", ls=ls, lw=1, label=f"{name} (t={t:.4g})")
    ax.set(xlabel="predicted probability", ylabel="cases", title="Predicted probability by class")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return _save(fig, out)


def plot_subgroups(
    sub: pd.DataFrame,
    metric: str = "roc_auc",
    *,
    threshold_name: str | None = None,
    overall: float | None = None,
    ax=None,
    out=None,
):
    """Bars of `metric` per subgroup (from `subgroup_metrics`) with CI error bars."""
    fig, ax = figure_axes(ax, (7, 3.5))
    if "threshold_name" in sub and len(sub):
        sub = sub[sub["threshold_name"] == (threshold_name or sub["threshold_name"].iloc[0])]
    sub = sub.reset_index(drop=True)
    if sub.empty:
        ax.text(0.5, 0.5, "no subgroups", ha="center", transform=ax.transAxes)
        return _save(fig, out)
    codes, variables = sub["variable"].factorize()
    x = np.arange(len(sub)) + codes * 0.6  # a gap between variables: view | sex | age blocks
    val = sub[metric].astype(float).to_numpy()
    lo = np.nan_to_num(val - sub[f"{metric}_lo"].astype(float).to_numpy())
    hi = np.nan_to_num(sub[f"{metric}_hi"].astype(float).to_numpy() - val)
    for i, var in enumerate(variables):
        m = codes == i
        err = [np.maximum(lo[m], 0), np.maximum(hi[m], 0)]
        ax.bar(x[m], np.nan_to_num(val[m]), yerr=err, color=f"C{i}", capsize=3, label=var)
    for xi in x[np.isnan(val)]:  # undefined here (e.g. AUC of a one-class group): say so
        ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="0.3")
    if overall is not None:
        ax.axhline(overall, c="k", ls="--", lw=1, label=f"overall {overall:.3f}")
    ax.legend(fontsize=7, loc="upper center", ncols=len(variables) + 1)
    labels = [f"{r.group}\nn={r.n}" for r in sub.itertuples()]
    if np.isnan(val).any():
        ax.set_xlabel("n/a: undefined in that group (e.g. only one class)", fontsize=7)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylabel=metric, ylim=(0, 1.15), title=f"{metric} by subgroup (95% CI)")
    return _save(fig, out)


def write_figures(
    pred: pd.DataFrame, metrics: Mapping[str, Any], out_dir: str | Path
) -> list[Path]:
    """Write ROC, PR, confusion, reliability, histogram and subgroup PNGs to out_dir/figures/,
    named `<kind>_<split>.png`; `metrics` is the `summarize` output. Returns the paths."""
    pred = check_predictions(pred)
    fig_dir = figures_dir(out_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_{metrics['split']}" if metrics.get("split") else ""
    thr = {k: v["threshold"] for k, v in metrics["thresholds"].items()}
    y, p = pred["target"].to_numpy(), pred["prob"].to_numpy()
    paths = {k: fig_dir / f"{k}{suffix}.png" for k in ("roc", "pr", "confusion", "reliability")}
    paths |= {k: fig_dir / f"{k}{suffix}.png" for k in ("prob_hist", "subgroups")}
    plot_roc(y, p, thresholds=thr, out=paths["roc"])
    plot_pr(y, p, thresholds=thr, out=paths["pr"])
    plot_confusion_grid(y, p, thr, out=paths["confusion"])
    raw = pred["prob_raw"].to_numpy() if "prob_raw" in pred else None
    plot_reliability(y, p, raw=raw, out=paths["reliability"])
    plot_prob_hist(y, p, thresholds=thr, out=paths["prob_hist"])
    sub = pd.DataFrame(metrics.get("subgroups") or [])
    if sub.empty:
        del paths["subgroups"]
    else:
        first = next(iter(thr))
        fig = Figure(figsize=(15, 3.8), layout="constrained")
        for ax, m in zip(
            fig.subplots(1, 3), ("roc_auc", "sensitivity", "specificity"), strict=True
        ):
            overall = metrics.get(m) if m == "roc_auc" else metrics["thresholds"][first][m]
            plot_subgroups(sub, m, threshold_name=first, overall=overall, ax=ax)
            ax.set_title(f"{m}" + ("" if m == "roc_auc" else f" at {first}"), fontsize=9)
        _save(fig, paths["subgroups"])
    return list(paths.values())


# --------------------------------------------------------------------------- sample grid
def pick_samples(pred: pd.DataFrame, threshold: float, n: int = 16, seed: int = 0) -> np.ndarray:
    """Row positions of `pred` to show: up to n/2 most confident mistakes (false positives with
    the highest probability and false negatives with the lowest, alternating), then correct
    calls drawn at random (seeded), true positives and true negatives alike."""
    pred = check_predictions(pred)
    p, y = pred["prob"].to_numpy(), pred["target"].to_numpy()
    call = p >= threshold
    fp = np.flatnonzero(call & (y == 0))
    fn = np.flatnonzero(~call & (y == 1))
    fp, fn = fp[np.argsort(-p[fp], kind="stable")], fn[np.argsort(p[fn], kind="stable")]
    mistakes = [i for pair in zip(fp, fn, strict=False) for i in pair]
    longer = fp if len(fp) > len(fn) else fn
    mistakes += list(longer[min(len(fp), len(fn)) :])
    chosen = mistakes[: n // 2]
    rng = np.random.default_rng(seed)
    right = [np.flatnonzero(call & (y == 1)), np.flatnonzero(~call & (y == 0))]
    right = [rng.permutation(r) for r in right]
    extra = [i for pair in zip(*right, strict=False) for i in pair]
    extra += list(np.concatenate(right)[len(extra) :]) if len(right[0]) != len(right[1]) else []
    seen = set(chosen)
    for i in extra + [i for i in mistakes if i not in seen]:
        if len(chosen) >= n:
            break
        if i not in seen:
            chosen.append(i)
            seen.add(i)
    return np.asarray(chosen, dtype=np.int64)


def plot_samples(
    images: Sequence[np.ndarray] | np.ndarray,
    pred: pd.DataFrame,
    *,
    threshold: float,
    boxes: Sequence[Any] | None = None,
    ncols: int = 4,
    title: str | None = None,
    out=None,
):
    """Grid of radiographs (H, W) with the true label, the probability and right/wrong at
    `threshold` (green frame right, red wrong); `pred` rows match `images`; expert boxes
    [x, y, w, h] (image pixels) in yellow. Returns the Figure."""
    pred = check_predictions(pred)
    n = len(pred)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        p, y = float(pred["prob"].iloc[i]), int(pred["target"].iloc[i])
        ok = (p >= threshold) == bool(y)
        ax.imshow(np.asarray(images[i]), cmap="gray", vmin=0, vmax=255)
        for x0, y0, w, h in boxes[i] if boxes is not None else []:
            ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="yellow", lw=1))
        verdict = (
            "right"
            if ok
            else ("WRONG: false positive" if p >= threshold else "WRONG: false negative")
        )
        ax.set_title(
            f"true: {CLASS_NAMES[y]}\np = {p:.3f}  {verdict}",
            fontsize=8,
            color="darkgreen" if ok else "red",
        )
        for spine in ax.spines.values():
            spine.set_edgecolor("green" if ok else "red")
            spine.set_linewidth(3)
    fig.suptitle(title or f"Sample predictions at t = {threshold:.3f}", fontsize=10)
    return _save(fig, out)


def sample_predictions_figure(
    pred: pd.DataFrame,
    cache: str | Path,
    *,
    metrics: Mapping[str, Any],
    n: int = 16,
    seed: int = 0,
    out: str | Path | None = None,
):
    """The cache images of `pick_samples(pred, t, n, seed)` drawn by `plot_samples`, where t is
    the val-chosen Youden threshold of `metrics` (an `evaluate_run` result). Returns the Figure;
    with `out`, also writes it (evaluate_run: figures/samples_<split>.png)."""
    thr = metrics["thresholds"]
    name = SAMPLES_THRESHOLD if SAMPLES_THRESHOLD in thr else next(iter(thr))
    t = float(thr[name]["threshold"])
    picked = pred.iloc[pick_samples(pred, t, n, seed)].reset_index(drop=True)
    rows = read_index(cache).set_index("patientId").loc[picked["patientId"].astype(str)]
    order = np.argsort(rows["row"].to_numpy(), kind="stable")
    images = np.empty((len(rows), *open_images(cache).shape[1:]), np.uint8)
    images[order] = open_images(cache)[rows["row"].to_numpy()[order]]  # memory map, in order
    wrong = int(((picked["prob"] >= t) != picked["target"].astype(bool)).sum())
    picks = (
        f"{wrong} mistake{'s' * (wrong != 1)}, most confident first, then random correct calls"
        if wrong
        else "no mistakes at this threshold: random correct calls"
    )
    title = (
        f"{metrics.get('split', '')}: {picks} "
        f"({name} threshold {t:.3f}, chosen on val; expert boxes in yellow)"
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    return plot_samples(
        images, picked, threshold=t, boxes=list(rows["boxes"]), title=title, out=out
    )
