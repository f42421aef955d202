"""Evaluate a run: predictions per split (optionally with test-time augmentation), metrics
from `pneumolib.metrics` written to JSON, and the figures (ROC/PR with operating points,
confusion matrices, reliability, probability histograms, subgroups, sample predictions).

Thresholds are chosen on validation and applied unchanged to test (`evaluate_run`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pneumolib.metrics import (
    CLASS_NAMES,
    RANKING_METRICS,
    as_thresholds,
    binary_metrics,
    brier,
    check_arrays,
    check_predictions,
    choose_thresholds,
    compare_with_reference,
    expected_calibration_error,
    jsonable,
    reliability,
    summarize,
)


# --------------------------------------------------------------------------- figures
def _fig_ax(ax: Any, figsize: tuple[float, float] = (5, 4)) -> tuple[Any, Any]:
    """Use the caller's axes, or a new pyplot-free Figure (Agg-safe, no global state)."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, out: str | Path | None) -> Any:
    """Write the PNG atomically (temporary file, then rename) when `out` is given."""
    if out is not None:
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, out)
    return fig


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _operating_points(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, float] | None):
    for (name, t), marker in zip((thresholds or {}).items(), _MARKERS * 4, strict=False):
        yield name, t, marker, binary_metrics(y, p, t)


def _one_class(y: np.ndarray, ax: Any) -> bool:
    """Curves need both classes; say so on the axes instead of failing the whole report."""
    if y.min() == y.max():
        ax.text(0.5, 0.5, "needs both classes", ha="center", transform=ax.transAxes)
        return True
    return False


def plot_roc(y: Any, p: Any, thresholds: Mapping[str, float] | None = None, ax=None, out=None):
    """ROC curve with each threshold's operating point marked; returns the Figure."""
    y, p = check_arrays(y, p)
    fig, ax = _fig_ax(ax)
    if _one_class(y, ax):
        return _save(fig, out)
    fpr, tpr, _ = skm.roc_curve(y, p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {skm.roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    for name, t, marker, m in _operating_points(y, p, thresholds):
        ax.plot(1 - m["specificity"], m["sensitivity"], marker, ms=8, label=f"{name} (t={t:.3f})")
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def plot_pr(y: Any, p: Any, thresholds: Mapping[str, float] | None = None, ax=None, out=None):
    """Precision-recall curve with operating points and the prevalence baseline."""
    y, p = check_arrays(y, p)
    fig, ax = _fig_ax(ax)
    if _one_class(y, ax):
        return _save(fig, out)
    prec, rec, _ = skm.precision_recall_curve(y, p)
    ax.plot(rec, prec, lw=2, label=f"PR (AP = {skm.average_precision_score(y, p):.3f})")
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    for name, t, marker, m in _operating_points(y, p, thresholds):
        ax.plot(m["recall"], m["precision"], marker, ms=8, label=f"{name} (t={t:.3f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall curve")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out)


def plot_confusion(
    y: Any, p: Any, threshold: float = 0.5, normalize: bool = False, ax=None, out=None, title=None
):
    """2x2 confusion matrix (rows: truth, columns: prediction), counts or row fractions."""
    m = binary_metrics(y, p, threshold)
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], dtype=np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = _fig_ax(ax, (3.6, 3.2))
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
    from matplotlib.figure import Figure

    thr = as_thresholds(thresholds)
    fig = Figure(figsize=(3.3 * len(thr), 6.2), layout="constrained")
    axes = fig.subplots(2, len(thr), squeeze=False)
    for j, (name, t) in enumerate(thr.items()):
        plot_confusion(y, p, t, False, axes[0, j], title=f"{name} (t={t:.3f}) counts")
        plot_confusion(y, p, t, True, axes[1, j], title=f"{name} (t={t:.3f}) row fractions")
    return _save(fig, out)


def plot_reliability(y: Any, p: Any, n_bins: int = 10, ax=None, out=None):
    """Reliability diagram (observed frequency vs mean predicted) over bin-count bars."""
    table = reliability(y, p, n_bins)
    fig, ax = _fig_ax(ax)
    width = table["hi"] - table["lo"]
    share = table["count"] / table["count"].sum()
    ax.bar(table["lo"], share, width=width, align="edge", color="lightgrey", label="share of cases")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    used = table[table["count"] > 0]
    ax.plot(used["mean_pred"], used["observed"], "o-", lw=2, label="model")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability")
    ax.set(ylabel="observed frequency of pneumonia")
    ax.set_title(
        f"Reliability (Brier {brier(y, p):.3f}, ECE {expected_calibration_error(table):.3f})"
    )
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out)


def plot_prob_hist(
    y: Any, p: Any, thresholds: Mapping[str, float] | None = None, bins: int = 30, ax=None, out=None
):
    """Histograms of predicted probability for each true class, thresholds as vertical lines."""
    y, p = check_arrays(y, p)
    fig, ax = _fig_ax(ax)
    edges = np.linspace(0, 1, bins + 1)
    for cls, color in ((0, "tab:blue"), (1, "tab:red")):
        ax.hist(p[y == cls], bins=edges, alpha=0.5, color=color, label=f"true {CLASS_NAMES[cls]}")
    for (name, t), ls in zip((thresholds or {}).items(), ("-", "--", ":", "-.") * 3, strict=False):
        ax.axvline(t, c="k", ls=ls, lw=1, label=f"{name} (t={t:.3f})")
    ax.set(xlabel="predicted probability", ylabel="cases", title="Predicted probability by class")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_subgroups(
    sub: pd.DataFrame,
    metric: str = "roc_auc",
    threshold_name: str | None = None,
    overall: float | None = None,
    ax=None,
    out=None,
):
    """Bars of `metric` per subgroup (from `subgroup_metrics`) with CI error bars."""
    fig, ax = _fig_ax(ax, (7, 3.5))
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
    if overall is not None:
        ax.axhline(overall, c="k", ls="--", lw=1, label=f"overall {overall:.3f}")
    ax.legend(fontsize=7, loc="upper center", ncols=len(variables) + 1)
    labels = [f"{r.group}\nn={r.n}" for r in sub.itertuples()]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylabel=metric, ylim=(0, 1.15), title=f"{metric} by subgroup (95% CI)")
    return _save(fig, out)


def write_figures(
    pred: pd.DataFrame, metrics: Mapping[str, Any], out_dir: str | Path
) -> list[Path]:
    """Write ROC, PR, confusion, reliability, histogram and subgroup PNGs to out_dir/figures/,
    named `<kind>_<split>.png`; `metrics` is the `summarize` output. Returns the paths."""
    pred = check_predictions(pred)
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_{metrics['split']}" if metrics.get("split") else ""
    thr = {k: v["threshold"] for k, v in metrics["thresholds"].items()}
    y, p = pred["target"].to_numpy(), pred["prob"].to_numpy()
    paths = {k: fig_dir / f"{k}{suffix}.png" for k in ("roc", "pr", "confusion", "reliability")}
    paths |= {k: fig_dir / f"{k}{suffix}.png" for k in ("prob_hist", "subgroups")}
    plot_roc(y, p, thr, out=paths["roc"])
    plot_pr(y, p, thr, out=paths["pr"])
    plot_confusion_grid(y, p, thr, out=paths["confusion"])
    plot_reliability(y, p, out=paths["reliability"])
    plot_prob_hist(y, p, thr, out=paths["prob_hist"])
    sub = pd.DataFrame(metrics.get("subgroups") or [])
    if sub.empty:
        del paths["subgroups"]
    else:
        from matplotlib.figure import Figure

        first = next(iter(thr))
        fig = Figure(figsize=(15, 3.8), layout="constrained")
        for ax, m in zip(
            fig.subplots(1, 3), ("roc_auc", "sensitivity", "specificity"), strict=True
        ):
            overall = metrics.get(m) if m == "roc_auc" else metrics["thresholds"][first][m]
            plot_subgroups(sub, m, first, overall, ax=ax)
            ax.set_title(f"{m}" + ("" if m == "roc_auc" else f" at {first}"), fontsize=9)
        _save(fig, paths["subgroups"])
    return list(paths.values())


# --------------------------------------------------------------------------- driver
def evaluate_predictions(
    pred_val: pd.DataFrame | None,
    pred: pd.DataFrame,
    split: str,
    out_dir: str | Path,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    target_sensitivity: float = 0.9,
    figures: bool = True,
) -> dict[str, Any]:
    """Metrics for `pred` (the `split` table) written to out_dir/metrics_<split>.json, figures
    to out_dir/figures/. Thresholds: given, else chosen on `pred_val` (or on `pred` when split is
    "val"); with neither, only 0.5 is used, so test never tunes its own threshold."""
    pred = check_predictions(pred, f"predictions_{split}")
    if thresholds is not None:
        thr, source = as_thresholds(thresholds), "given"
    elif pred_val is not None or split == "val":
        val = check_predictions(pred if pred_val is None else pred_val, "predictions_val")
        thr, source = choose_thresholds(val["target"], val["prob"], target_sensitivity), "val"
    else:
        thr, source = {"0.5": 0.5}, "fixed"
    metrics = {"split": split, "threshold_source": source}
    metrics |= summarize(pred, thr, n_boot=n_boot, seed=seed)
    if split == "val" and "0.5" in metrics["thresholds"]:
        ref = compare_with_reference(metrics).reset_index()
        metrics["reference"] = jsonable(ref.to_dict("records"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        write_figures(pred, metrics, out_dir)
    path = out_dir / f"metrics_{split}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False))
    os.replace(tmp, path)  # never leave a half-written metrics file behind
    return metrics


# --------------------------------------------------------------------------- a whole run
TTA_SHIFT = 0.04  # test-time shifts, fraction of the side
TTA_SCALES = (0.95, 1.05)  # test-time zooms about the centre
SAMPLES_THRESHOLD = "youden"  # operating point the sample grid marks right/wrong (else 0.5)


def tta_affines(in_size: int, out_size: int, hflip: bool = False) -> dict[str, np.ndarray]:
    """Deterministic test-time variants -> {name: forward matrix (2, 3), cache pixels ->
    input pixels}: identity (the plain validation resize), shifts of +-4% along x and y, zoom
    0.95 and 1.05, and a horizontal flip only for runs that trained with hflip."""
    from pneumolib.augment import compose_affines

    s = TTA_SHIFT
    spec = {"identity": (0.0, 0.0, 1.0, False)}
    spec |= {"x+4%": (s, 0.0, 1.0, False), "x-4%": (-s, 0.0, 1.0, False)}
    spec |= {"y+4%": (0.0, s, 1.0, False), "y-4%": (0.0, -s, 1.0, False)}
    spec |= {f"zoom {z:g}": (0.0, 0.0, z, False) for z in TTA_SCALES}
    if hflip:
        spec["hflip"] = (0.0, 0.0, 1.0, True)
    v = np.array([x[:3] for x in spec.values()], dtype=np.float64)
    n = len(spec)
    params = {
        "crop": np.tile([0.0, 0.0, in_size, in_size], (n, 1)),
        "angle": np.zeros(n),
        "scale": v[:, 2],
        "shift": v[:, :2],
        "flip": np.array([x[3] for x in spec.values()]),
    }
    return dict(zip(spec, compose_affines(params, in_size, out_size), strict=True))


def _predict_tta(model, loader, device, size: int, stats: dict, mats, amp, on_device: bool):
    """Mean probability over the variants `mats` {name: (2, 3)} for a loader of raw uint8
    (B, S, S) batches -> (probabilities (N,), targets (N,), positions (N,))."""
    import torch
    from tqdm.auto import tqdm

    from pneumolib.predict import model_input

    probs, targets, positions = [], [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="predict (TTA)", leave=False):
            images = batch["images"].numpy()  # (B, S, S) uint8
            total = torch.zeros(len(images), dtype=torch.float64)
            for m in mats.values():
                x = model_input(
                    images, np.repeat(m[None], len(images), 0), size, stats, device, on_device
                )
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    total += torch.sigmoid(model(x).float().squeeze(1)).double().cpu()
            probs.append((total / len(mats)).numpy())
            targets.append(batch["target"].numpy())
            positions.append(batch["position"].numpy())
    return np.concatenate(probs), np.concatenate(targets), np.concatenate(positions)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False))
    os.replace(tmp, path)


def read_predictions(run: str | Path, split: str = "val", tta: bool = False) -> pd.DataFrame:
    """RUN/predictions_<split>[_tta].csv as written by `evaluate_run`."""
    path = Path(run) / f"predictions_{split}{'_tta' if tta else ''}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `python -m pneumolib evaluate` first")
    return pd.read_csv(path, dtype={"patientId": str, "sex": str, "view": str})


def _split_predictions(ctx: dict, split: str, reuse: bool) -> pd.DataFrame:
    """Predictions table of one split: reused from RUN when its sidecar says it came from the
    same checkpoint, cache rows and TTA setting, else predicted and written (CSV, then sidecar)."""
    from pneumolib.data import make_loader
    from pneumolib.train import predict_probs

    run, cache, index, tta = ctx["run"], ctx["cache"], ctx["index"], ctx["tta"]
    tag = split + ("_tta" if tta else "")
    csv, meta_path = run / f"predictions_{tag}.csv", run / f"predictions_{tag}.meta.json"
    rows = index[index["split"] == split].reset_index(drop=True)
    if rows.empty:
        rule = ctx["split_rule"]
        raise ValueError(f"{cache}: no {split} rows (split rule {rule!r}); nothing to evaluate")
    meta = {"checkpoint_sha256": ctx["sha256"], "cache": str(cache), "tta": tta, "n": len(rows)}
    if reuse and csv.is_file() and meta_path.is_file():
        if json.loads(meta_path.read_text()) == meta:
            pred = read_predictions(run, split, tta)
            if sorted(pred["patientId"]) == sorted(rows["patientId"]):
                print(f"{split}: reusing {csv.name} (same checkpoint)")
                return pred
    cfg, dev = ctx["config"], ctx["device"]
    loader = make_loader(
        cache,
        rows,
        int(cfg.get("eval_batch_size", 128)),
        ctx["size"],
        ctx["policy"],
        False,
        int(cfg.get("seed", 0)),
        ctx["workers"],
        warp_in_worker=not (ctx["on_device"] or tta),
        pin_memory=dev.type == "cuda",
    )
    if tta:
        p, y, pos = _predict_tta(
            ctx["model"],
            loader,
            dev,
            ctx["size"],
            ctx["stats"],
            ctx["mats"],
            ctx["amp"],
            ctx["on_device"],
        )
    else:
        p, y, pos = predict_probs(
            ctx["model"], loader, dev, ctx["size"], ctx["stats"], ctx["amp"], progress=True
        )
    picked = rows.iloc[pos].reset_index(drop=True)
    if not np.array_equal(picked["target"].to_numpy(), y.astype(picked["target"].dtype)):
        raise RuntimeError(f"{cache}: loader targets do not match index.csv rows")
    pred = picked[["patientId"]].assign(prob=np.clip(p.astype(np.float64), 0.0, 1.0))
    pred = pred.assign(**{c: picked[c] for c in ("target", "view", "sex", "age") if c in picked})
    meta_path.unlink(missing_ok=True)  # a CSV without its sidecar is never reused
    tmp = csv.with_name(csv.name + ".tmp")
    pred.to_csv(tmp, index=False)
    os.replace(tmp, csv)
    _write_json(meta, meta_path)
    return pred


def evaluate_run(
    run: str | Path,
    split: str = "val",
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    device: str = "auto",
    cache: str | Path | None = None,
    workers: int | None = None,
    n_samples: int = 16,
    figures: bool = True,
) -> dict[str, Any]:
    """Evaluate RUN/best.pt on one split of its cache: RUN/predictions_<split>.csv
    (`patientId, prob, target, view, sex, age`), RUN/metrics_<split>.json and figures/*_<split>
    (incl. `samples_<split>.png`). Thresholds are always chosen on val (for test, val
    predictions of the same checkpoint are reused or made first) and applied unchanged.
    `tta` averages over `tta_affines` and writes `..._<split>_tta` files instead. `cache`
    overrides the checkpoint's cache path, `workers` its loader workers; `figures=False` skips
    the PNGs. Returns the metrics."""
    from pneumolib.augment import AugmentPolicy
    from pneumolib.data import read_index, read_stats
    from pneumolib.models import load_checkpoint_model
    from pneumolib.predict import _warp_on_device
    from pneumolib.train import amp_dtype, resolve_device

    if split not in ("val", "test"):
        raise ValueError(f"split: expected 'val' or 'test', got {split!r}")
    run = Path(run)
    ckpt = run / "best.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint; train first (python -m pneumolib train)")
    dev = resolve_device(device)
    model, config, stats = load_checkpoint_model(ckpt, map_location=dev)
    cache = Path(cache if cache is not None else config["cache"])
    index, cache_stats = read_index(cache), read_stats(cache)
    if int(cache_stats["size"]) != int(stats["size"]):
        raise ValueError(
            f"{cache}: images are {cache_stats['size']} px, the checkpoint was trained on a "
            f"{stats['size']} px cache; pass the run's own cache"
        )
    size = int(config.get("image_size", stats["size"]))
    ctx = {
        "run": run,
        "cache": cache,
        "index": index,
        "tta": tta,
        "split_rule": cache_stats.get("split_rule"),
        "sha256": _sha256(ckpt),
        "config": config,
        "device": dev,
        "model": model,
        "stats": stats,
        "size": size,
        "policy": AugmentPolicy.identity(),
        "workers": int(config.get("workers", 0)) if workers is None else workers,
        "on_device": _warp_on_device(config, dev),
        "amp": amp_dtype(dev, bool(config.get("amp", False))),
        "mats": tta_affines(int(stats["size"]), size, bool(config.get("hflip"))) if tta else {},
    }
    pred = _split_predictions(ctx, split, reuse=False)
    pred_val = pred if split == "val" else _split_predictions(ctx, "val", reuse=True)
    tag = split + ("_tta" if tta else "")
    metrics = evaluate_predictions(
        pred_val, pred, tag, run, n_boot=n_boot, seed=seed, figures=figures
    )
    rule = ctx["split_rule"]
    metrics |= {
        "split": tag,
        "cache": str(cache),
        "split_rule": rule,
        "checkpoint": {"path": str(ckpt), "sha256": ctx["sha256"]},
        "tta": tta,
        "tta_variants": list(ctx["mats"]),
        "predictions": f"predictions_{tag}.csv",
    }
    if split == "val":
        if "reference" not in metrics:
            ref = compare_with_reference(metrics | {"split": "val"})  # TTA on val is still val
            metrics["reference"] = jsonable(ref.reset_index().to_dict("records"))
        metrics["reference_comparable"] = rule == "course"
        metrics["reference_note"] = (
            "References: validation on the course split (first 24,000 RSNA patients train, the "
            f"rest val) of the real data, threshold 0.5. This cache's split rule is {rule!r}"
            + (
                "; comparable only if it was built from the real RSNA data."
                if rule == "course"
                else ", so the numbers are not like for like."
            )
        )
    else:
        metrics.pop("reference", None)
    _write_json(metrics, run / f"metrics_{tag}.json")
    if figures:
        fig_path = run / "figures" / f"samples_{tag}.png"
        sample_predictions_figure(pred, cache, metrics, n_samples, seed, out=fig_path)
    _print_summary(metrics)
    return jsonable(metrics)


def metrics_table(
    metrics: Mapping[str, Any],
    names: Sequence[str] = ("accuracy", "precision", "recall", "specificity", "f1"),
) -> pd.DataFrame:
    """One row per (validation-chosen) threshold of a metrics dict: the threshold value and
    each metric as 'value [lo, hi]' (95% bootstrap CI), for printing and notebooks."""

    rows = {}
    for name, t in metrics["thresholds"].items():
        rows[name] = {"threshold": round(float(t["threshold"]), 4)}
        rows[name] |= {m: _with_ci(t.get(m), t.get("ci", {}).get(m)) for m in names}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "threshold (chosen on val)"
    return df


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per evaluated split, e.g. {"val": metrics, "test": metrics}: n, positives,
    ROC AUC, average precision and Brier score as 'value [lo, hi]' (95% CI), and ECE."""
    rows = {}
    for name, m in results.items():
        rows[name] = {"n": m["n"], "positives": m["n_pos"]}
        rows[name] |= {k: _with_ci(m.get(k), m.get(f"{k}_ci")) for k in RANKING_METRICS}
        rows[name]["ece"] = _with_ci(m.get("ece"), None)
    return pd.DataFrame.from_dict(rows, orient="index")


def _with_ci(v: Any, ci: Any) -> str:
    """'0.912 [0.880, 0.940]'; 'n/a' where undefined (None/NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    lo, hi = ci if ci else (None, None)
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def _print_summary(metrics: Mapping[str, Any]) -> None:
    auc, (lo, hi) = metrics["roc_auc"], metrics["roc_auc_ci"]
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    head = f"{metrics['split']}: n={metrics['n']} ({metrics['n_pos']} positive)  "
    print(head + (f"AUC {auc:.3f}{ci}" if auc is not None else "AUC n/a (one class)"))
    table = metrics_table(metrics, ("accuracy", "precision", "recall"))
    print(table.to_string())


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
    threshold: float,
    boxes: Sequence[Any] | None = None,
    ncols: int = 4,
    title: str | None = None,
    out=None,
):
    """Grid of radiographs (H, W) with the true label, the probability and right/wrong at
    `threshold` (green frame right, red wrong); `pred` rows match `images`; expert boxes
    [x, y, w, h] (image pixels) in yellow. Returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

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
    metrics: Mapping[str, Any],
    n: int = 16,
    seed: int = 0,
    out: str | Path | None = None,
):
    """The cache images of `pick_samples(pred, t, n, seed)` drawn by `plot_samples`, where t is
    the val-chosen Youden threshold of `metrics` (an `evaluate_run` result). Returns the Figure;
    with `out`, also writes it (evaluate_run: figures/samples_<split>.png)."""
    from pneumolib.data import open_images, read_index

    thr = metrics["thresholds"]
    name = SAMPLES_THRESHOLD if SAMPLES_THRESHOLD in thr else next(iter(thr))
    t = float(thr[name]["threshold"])
    picked = pred.iloc[pick_samples(pred, t, n, seed)].reset_index(drop=True)
    rows = read_index(cache).set_index("patientId").loc[picked["patientId"].astype(str)]
    order = np.argsort(rows["row"].to_numpy(), kind="stable")
    images = np.empty((len(rows), *open_images(cache).shape[1:]), np.uint8)
    images[order] = open_images(cache)[rows["row"].to_numpy()[order]]  # memory map, in order
    title = (
        f"{metrics.get('split', '')}: most confident mistakes first, then random correct calls "
        f"({name} threshold {t:.3f}, chosen on val; expert boxes in yellow)"
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    return plot_samples(images, picked, t, list(rows["boxes"]), title=title, out=out)
