"""Evaluate a run: predictions per split (optionally with test-time augmentation), metrics
from `pneumolib.base.metrics` written to JSON, and the figures of `pneumolib.evaluate.figures`.

Thresholds are chosen on validation and applied unchanged to test (`evaluate_run`). Runs are
compared on the same patients by `pneumolib.evaluate.compare.compare_runs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pneumolib.base.config import Config
from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.fmt import with_ci
from pneumolib.base.metrics import (
    RANKING_METRICS,
    as_thresholds,
    check_predictions,
    choose_thresholds,
    jsonable,
    summarize,
)
from pneumolib.base.rundir import (
    predictions_meta_path,
    predictions_name,
    predictions_path,
    read_predictions,
    samples_figure_path,
    split_metrics_path,
    split_tag,
)
from pneumolib.core import tasks
from pneumolib.core.checkpoint import load_run
from pneumolib.core.loader import eval_loader
from pneumolib.core.runtime import (
    amp_dtype,
    predict_logits,
    warp_on_device,
)
from pneumolib.data.labels import CacheStats, open_cache
from pneumolib.evaluate.calibration import (
    OPERATING_POINTS,
    Calibration,
    activation,
    calibration_block,
    calibration_figures,
    default_method,
    fit_calibration,
    prior_shift,
    raw_logits,
    write_calibration,
)
from pneumolib.evaluate.card import write_card
from pneumolib.evaluate.figures import sample_predictions_figure, write_figures
from pneumolib.evaluate.multiclass import class_table, confusion_table, summarize_classes
from pneumolib.evaluate.ood import ood_block, ood_line
from pneumolib.evaluate.reference import compare_with_reference
from pneumolib.evaluate.tta import predict_tta, tta_affines

# --------------------------------------------------------------------------- driver
__all__ = [
    "evaluate_predictions",
    "evaluate_run",
    "metrics_table",
    "read_predictions",
    "summary_table",
    "tta_affines",
]


def evaluate_predictions(
    pred_val: pd.DataFrame | None,
    pred: pd.DataFrame,
    *,
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
    metrics: dict[str, Any] = {"split": split, "threshold_source": source}
    metrics |= summarize(pred, thresholds=thr, n_boot=n_boot, seed=seed)
    classes = summarize_classes(pred, n_boot=n_boot, seed=seed)
    metrics["task"] = tasks.task_of_columns(pred.columns).name
    if classes is not None:
        metrics["three_class"] = classes
    if split == "val" and "0.5" in metrics["thresholds"]:
        ref = compare_with_reference(metrics).reset_index()
        metrics["reference"] = jsonable(ref.to_dict("records"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        write_figures(pred, metrics, out_dir)
    # never leave a half-written metrics file behind
    atomic_write(split_metrics_path(out_dir, split), json.dumps(metrics, indent=2, allow_nan=False))
    return metrics


# --------------------------------------------------------------------------- a whole run
def _write_json(obj: Any, path: Path) -> None:
    atomic_write(path, json.dumps(jsonable(obj), indent=2, allow_nan=False))


def _split_predictions(
    ctx: _RunContext, split: str, reuse: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    """One split's index rows in prediction order and their raw class probabilities (N, K):
    reused from RUN's predictions CSV when its sidecar says it came from the same checkpoint,
    cache rows and TTA setting (and it holds the raw columns), else predicted."""
    run, cache, index, tta = ctx.run, ctx.cache, ctx.index, ctx.tta
    rows = index[index["split"] == split].reset_index(drop=True)
    if rows.empty:
        rule = ctx.split_rule
        raise UsageError(f"{cache}: no {split} rows (split rule {rule!r}); nothing to evaluate")
    meta_path = predictions_meta_path(run, split, tta)
    raw_cols = _raw_columns(ctx.config.task)
    if reuse and predictions_path(run, split, tta).is_file() and meta_path.is_file():
        if json.loads(meta_path.read_text()) == _sidecar(ctx, len(rows)):
            pred = read_predictions(run, split, tta)
            same_rows = sorted(pred["patientId"]) == sorted(rows["patientId"])
            if same_rows and set(raw_cols) <= set(pred.columns):
                print(f"{split}: reusing {predictions_name(split, tta)} (same checkpoint)")
                picked = rows.set_index("patientId").loc[pred["patientId"]].reset_index()
                return picked, pred[list(raw_cols)].to_numpy(np.float64)
    cfg, dev = ctx.config, ctx.device
    loader = eval_loader(cache, rows, config=cfg, workers=ctx.workers,
                         warp_in_worker=not (ctx.on_device or tta), device=dev)  # fmt: skip
    if tta:
        p, y, pos = predict_tta(
            ctx.model, loader, dev, cfg.image_size, ctx.stats, ctx.mats, ctx.amp, ctx.on_device
        )
    else:
        logits, y, pos = predict_logits(
            ctx.model,
            loader,
            device=dev,
            size=cfg.image_size,
            stats=ctx.stats,
            amp=ctx.amp,
            progress=True,
        )
        p = activation(logits)  # float64, so `raw_logits` inverts it closely
    picked = rows.iloc[pos].reset_index(drop=True)
    if not np.array_equal(picked["target"].to_numpy(), y.astype(picked["target"].dtype)):
        raise RuntimeError(f"{cache}: loader targets do not match index.csv rows")
    return picked, np.clip(p.astype(np.float64), 0.0, 1.0)


def _sidecar(ctx: _RunContext, n: int) -> dict[str, Any]:
    """What a predictions CSV was made from: checkpoint, cache, TTA and number of rows."""
    return {"checkpoint_sha256": ctx.sha256, "cache": str(ctx.cache), "tta": ctx.tta, "n": n}


def _write_predictions(ctx: _RunContext, split: str, pred: pd.DataFrame) -> None:
    """RUN/predictions_<split>.csv, then its sidecar (a CSV without one is never reused)."""
    meta_path = predictions_meta_path(ctx.run, split, ctx.tta)
    meta_path.unlink(missing_ok=True)
    atomic_write(predictions_path(ctx.run, split, ctx.tta), lambda p: pred.to_csv(p, index=False))
    _write_json(_sidecar(ctx, len(pred)), meta_path)


def _raw_columns(task: str) -> tuple[str, ...]:
    """The columns that keep a task's raw class probabilities (N, K): `prob_raw` (binary) or
    `prob_raw_<class>` per class (three-class)."""
    columns = tasks.task_spec(task).prob_columns
    return tuple(c.replace("prob_", "prob_raw_", 1) for c in columns) or ("prob_raw",)


def _predictions_table(rows: pd.DataFrame, raw: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Index rows, their raw and calibrated class probabilities (N, K) -> `patientId, prob,
    target, view, sex, age, prob_raw`, where `prob` is the calibrated pneumonia probability and
    `prob_raw` the network's; a three-class run adds `class`, one `prob_<class>` column per
    class (`Task.prob_columns`, calibrated) and `prob_raw_<class>`."""
    pred = rows[["patientId"]].assign(prob=tasks.pneumonia(probs))
    pred = pred.assign(**{c: rows[c] for c in ("target", "view", "sex", "age") if c in rows})
    task = tasks.task_of(probs.shape[1])
    if task.prob_columns:
        pred = pred.assign(**{"class": rows["class"]})
        pred = pred.assign(**{c: probs[:, k] for k, c in enumerate(task.prob_columns)})
    pred = pred.assign(prob_raw=tasks.pneumonia(raw))
    if task.prob_columns:
        pred = pred.assign(**{c: raw[:, k] for k, c in enumerate(_raw_columns(task.name))})
    return pred


def _fit_run_calibration(
    ctx: _RunContext, val_rows: pd.DataFrame, val_raw: np.ndarray, method: str
) -> Calibration:
    """Calibration of the run's checkpoint fitted on its val predictions (N, K): the prior
    correction from the train prevalence and the trainer's own loss weights and sampling,
    then `method`; the operating points chosen on the calibrated val probability."""
    cfg = ctx.config
    task = tasks.task_spec(cfg.task)
    where = f"{ctx.cache}/index.csv"
    train = task.targets(ctx.index[ctx.index["split"] == "train"], where=where)
    if len(train) == 0:
        raise UsageError(f"{where}: no train rows; the prior correction needs the train prevalence")
    weights = task.class_weights(train, pos_weight=cfg.pos_weight, balanced=cfg.balanced_sampling)
    k = task.n_outputs
    prevalence = float(np.mean(train)) if k == 1 else np.bincount(train, minlength=k) / len(train)
    shift = prior_shift(
        train_prevalence=prevalence, balanced=cfg.balanced_sampling, loss_weights=weights
    )
    logits = raw_logits(val_raw)
    y_pos = val_rows["target"].to_numpy()
    cal = fit_calibration(logits, task.targets(val_rows, where=where), shift=shift, method=method)
    p_raw, p_cal = tasks.pneumonia(val_raw), cal.pneumonia(logits)
    chosen = choose_thresholds(y_pos, p_cal, 0.9)
    fitted: dict[str, Any] = {"n": len(y_pos), "n_pos": int(y_pos.sum())}
    for name, p in (("raw", p_raw), ("calibrated", p_cal)):
        fitted[name] = {k: v for k, v in calibration_figures(y_pos, p, n_boot=0).items()
                        if not k.endswith("_ci")}  # fmt: skip
    return replace(
        cal,
        operating_points={n: chosen[_CHOSEN.get(n, n)] for n in OPERATING_POINTS},
        train_prevalence=float(np.mean(task.is_pneumonia(train))),
        val_prevalence=float(np.mean(y_pos)),
        fitted_on=fitted,
        checkpoint_sha256=ctx.sha256,
    )


_CHOSEN = {"sens90": "sens@0.90"}  # operating point -> its name in `choose_thresholds`


def evaluate_run(
    run: str | Path,
    split: str = "val",
    *,
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "auto",
    cache: str | Path | None = None,
    workers: int | None = None,
    n_samples: int = 16,
    figures: bool = True,
    print_table: bool = True,
    calibration: str | None = None,
) -> dict[str, Any]:
    """Evaluate RUN/best.pt on one split of its cache: RUN/calibration.json (fitted on val;
    `calibration` names the method, default `calibration.default_method`),
    RUN/predictions_<split>.csv (`patientId, prob, target, view, sex, age, prob_raw`: `prob`
    calibrated), RUN/metrics_<split>.json (with a `calibration` block: before and after) and
    figures/*_<split> (incl. `samples_<split>.png`).
    Thresholds are always chosen on val, on the calibrated probability (for test, val
    predictions of the same checkpoint are reused or made first) and applied unchanged.
    `tta` averages over `tta_affines` and writes `..._<split>_tta` files instead. `cache`
    overrides the checkpoint's cache path, `workers` its loader workers; `figures=False` skips
    the PNGs. On test (without TTA) it also writes RUN/MODEL_CARD.md (`card.write_card`).
    Prints a one-line summary and, with `print_table` (the command line), the metrics
    per threshold; a notebook that shows `metrics_table` itself passes False. Returns the
    metrics."""
    if split not in ("val", "test"):
        raise UsageError(f"split: expected 'val' or 'test', got {split!r}")
    run = Path(run)
    ctx = _run_context(run, device=device, cache=cache, workers=workers, tta=tta)
    val_rows, val_raw = _split_predictions(ctx, "val", reuse=split != "val")
    method = calibration or default_method(tasks.task_spec(ctx.config.task).n_outputs)
    cal = _fit_run_calibration(ctx, val_rows, val_raw, method)
    if not tta:  # predict scores without TTA: the file holds the plain checkpoint's fit
        print(f"calibration ({cal.method}): {write_calibration(run, cal)}")
    pred_val = _predictions_table(val_rows, val_raw, cal.apply(raw_logits(val_raw)))
    _write_predictions(ctx, "val", pred_val)
    pred = pred_val
    if split != "val":
        rows, raw = _split_predictions(ctx, split, reuse=False)
        pred = _predictions_table(rows, raw, cal.apply(raw_logits(raw)))
        _write_predictions(ctx, split, pred)
    tag = split_tag(split, tta)
    metrics = evaluate_predictions(
        pred_val, pred, split=tag, out_dir=run, n_boot=n_boot, seed=seed, figures=figures
    )
    metrics["calibration"] = calibration_block(
        pred["target"], pred["prob_raw"], pred["prob"], method=cal.method, n_boot=n_boot, seed=seed
    ) | {"shift": list(cal.shift), "temperature": cal.temperature, "platt": list(cal.platt)}
    metrics |= {
        "split": tag,
        "cache": str(ctx.cache),
        "split_rule": ctx.split_rule,
        "checkpoint": {"path": str(ctx.checkpoint), "sha256": ctx.sha256},
        "tta": tta,
        "tta_variants": list(ctx.mats),
        "predictions": predictions_name(split, tta),
    }
    if not tta:  # the check predict applies, and how much of this split it flags
        metrics["ood"] = ood_block(ctx, split)
        print(ood_line(metrics["ood"], split))
    _reference_fields(metrics, split, ctx.split_rule)
    _write_json(metrics, split_metrics_path(run, tag))
    if tag == "test":  # the held-out numbers exist now: the model card can say them
        print(f"model card: {write_card(run)}")
    if figures:
        fig_path = samples_figure_path(run, tag)
        sample_predictions_figure(
            pred, ctx.cache, metrics=metrics, n=n_samples, seed=seed, out=fig_path
        )
    _print_summary(metrics, print_table)
    return jsonable(metrics)


@dataclass(frozen=True)
class _RunContext:
    """What predicting a run's splits needs, built once by `_run_context`."""

    run: Path  # the run folder
    cache: Path  # its cache (or the one passed instead)
    index: pd.DataFrame  # the cache's index.csv
    split_rule: str | None  # the cache's split rule (stats.json)
    tta: bool  # average over `mats`
    mats: dict[str, np.ndarray]  # test-time variants {name: (2, 3)}; empty without TTA
    checkpoint: Path  # RUN/best.pt
    sha256: str  # of the checkpoint: a predictions sidecar names it
    config: Config  # the run's
    device: torch.device
    model: torch.nn.Module  # best.pt in eval mode on `device`
    stats: CacheStats  # the checkpoint's pixel statistics
    workers: int  # loader workers
    on_device: bool  # the warp runs on the device (`warp_on_device`)
    amp: torch.dtype | None  # autocast dtype, None for float32


def _run_context(
    run: Path, *, device: str, cache: str | Path | None, workers: int | None, tta: bool
) -> _RunContext:
    """What predicting a run's splits needs: its best.pt model on the device, its config, the
    cache (checked to match the checkpoint's image size), the warp and precision rules."""
    loaded = load_run(run, device=device, cache=cache)
    cfg, dev, stats = loaded.config, loaded.device, loaded.stats
    cache = Path(cfg.cache)
    index, cache_stats = open_cache(cache)  # refused when damaged since preprocess
    if cache_stats.size != stats.size:
        raise UsageError(
            f"{cache}: images are {cache_stats.size} px, the checkpoint was trained on a "
            f"{stats.size} px cache; pass the run's own cache"
        )
    return _RunContext(
        run=run,
        cache=cache,
        index=index,
        split_rule=cache_stats.split_rule,
        tta=tta,
        mats=tta_affines(stats.size, cfg.image_size, hflip=cfg.hflip) if tta else {},
        checkpoint=loaded.checkpoint,
        sha256=loaded.sha256,
        config=cfg,
        device=dev,
        model=loaded.model,
        stats=stats,
        workers=cfg.workers if workers is None else workers,
        on_device=warp_on_device(dev, gpu_augment=cfg.gpu_augment),
        amp=amp_dtype(dev, cfg.amp),
    )


def _reference_fields(metrics: dict[str, Any], split: str, rule: str | None) -> None:
    """On val: the course's reference figures beside ours, and whether they compare."""
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


def metrics_table(
    metrics: Mapping[str, Any],
    names: Sequence[str] = ("accuracy", "precision", "recall", "specificity", "f1"),
) -> pd.DataFrame:
    """One row per (validation-chosen) threshold of a metrics dict: the threshold value and
    each metric as 'value [lo, hi]' (95% bootstrap CI), for printing and notebooks."""

    rows: dict[str, dict[str, float | str]] = {}
    for name, t in metrics["thresholds"].items():
        rows[name] = {"threshold": round(float(t["threshold"]), 4)}
        rows[name] |= {m: with_ci(t.get(m), t.get("ci", {}).get(m)) for m in names}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "threshold (chosen on val)"
    return df


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per evaluated split, e.g. {"val": metrics, "test": metrics}: n, positives,
    ROC AUC, average precision and Brier score as 'value [lo, hi]' (95% CI), and ECE."""
    rows = {}
    for name, m in results.items():
        rows[name] = {"n": m["n"], "positives": m["n_pos"]}
        rows[name] |= {k: with_ci(m.get(k), m.get(f"{k}_ci")) for k in RANKING_METRICS}
        rows[name]["ece"] = with_ci(m.get("ece"), None)
    return pd.DataFrame.from_dict(rows, orient="index")


def _print_summary(metrics: Mapping[str, Any], table: bool = True) -> None:
    auc, (lo, hi) = metrics["roc_auc"], metrics["roc_auc_ci"]
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    head = f"{metrics['split']}: n={metrics['n']} ({metrics['n_pos']} positive)  "
    print(head + (f"AUC {auc:.3f}{ci}" if auc is not None else "AUC n/a (one class)"))
    if table:
        print(metrics_table(metrics, ("accuracy", "precision", "recall")).to_string())
    if table and "three_class" in metrics:
        print(class_table(metrics["three_class"]).to_string())
        print(confusion_table(metrics["three_class"]).to_string())
