"""A trained run's CAMs: maps over a split, scored against the expert boxes, drawn and written.

`cam_run` loads RUN/best.pt, computes CAM or Grad-CAM (`pneumolib.cam.maps`) for every image of one
split with the inputs made exactly as for validation, scores the true positives with the
pointing game and the energy in the box (`pneumolib.cam.localisation`), and writes a CSV, a JSON
summary and overlay PNGs (`pneumolib.cam.figures`) into the run (`python -m pneumolib cam
--run RUN`). `cam_examples` gives the maps of a few chosen patients (notebooks).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pneumolib.base.config import Config
from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.progress import bar as progress_bar
from pneumolib.base.rundir import BEST, cam_stem, figures_dir
from pneumolib.cam.box_run import BoxPlan
from pneumolib.cam.figures import save_overlays
from pneumolib.cam.localisation import (
    format_localisation,
    localisation_scores,
    scale_boxes,
    summarize_localisation,
)
from pneumolib.cam.maps import cam, class_target, default_layer, grad_cam, resolve_layer
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.checkpoint import Run, load_run
from pneumolib.core.loader import make_loader
from pneumolib.core.runtime import to_device_batch, warp_on_device
from pneumolib.data.cache_files import INDEX
from pneumolib.data.labels import CacheStats, open_cache, original_sizes

# --- a whole run: maps over a split, scores, overlays -------------------------------------

POSITIVE_THRESHOLD = 0.5  # a prediction is positive at prob >= this (see `cam_run`)
METHODS = ("cam", "gradcam")
KINDS = ("tp", "fn", "fp")  # outcomes drawn as overlays: true positive, false neg., false pos.
COUNTS = {  # outcome -> its count in the summary
    "tp": "n_true_positives",
    "fn": "n_false_negatives",
    "fp": "n_false_positives",
    "tp_no_box": "n_true_positives_without_box",
}
SCORE_COLUMNS = ["patientId", "pointing_hit", "energy_in_box", "box_area_fraction"]


def _method(method: str) -> str:
    name = method.lower().replace("_", "").replace("-", "")
    if name not in METHODS:
        raise UsageError(f"method: expected one of {METHODS}, got {method!r}")
    return name


def iter_cam_batches(
    model: nn.Module,
    cache: str | Path,
    *,
    index: pd.DataFrame,
    image_size: int,
    stats: CacheStats,
    gpu_augment: bool = True,
    method: str = "cam",
    layer: str | None = None,
    target: str = "pneumonia",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    desc: str = "cam",
) -> Iterator[dict[str, Any]]:
    """Maps for the `index` rows of `cache`, one forward pass per batch, inputs made exactly as
    for validation (plain resize to `image_size`, normalised with the checkpoint's `stats`, the
    warp where the run's validation did it: `runtime.warp_on_device` with its `gpu_augment`).

    `target` is what the maps explain: "pneumonia" (either task) or, for a three-class run,
    one class ("normal", "not_normal", "lung_opacity"; `cam.class_target`).

    Yields dicts: `rows` (the batch's slice of `index`), `images` uint8 (B, S, S) (the network
    input, de-normalised, for drawing), `maps` float32 (B, S, S) in [0, 1], `probs` (B,) (the
    pneumonia probability).
    """
    method = _method(method)
    score = class_target(target)
    layer = resolve_layer(model, layer)
    device = next(model.parameters()).device
    index = index.reset_index(drop=True)
    policy = AugmentPolicy.identity()
    loader = make_loader(
        cache,
        index,
        batch_size=batch_size,
        out_size=image_size,
        policy=policy,
        train=False,
        seed=0,
        workers=workers,
        warp_in_worker=not warp_on_device(device, gpu_augment=gpu_augment),
    )
    mean, std = float(stats.mean), float(stats.std)
    for batch in progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        x = to_device_batch(
            batch,
            device,
            size=image_size,
            policy=policy,
            stats=stats,
            train=False,
            seed=0,
            channels_last=False,
        )
        if method == "cam":
            maps, probs = cam(model, x, layer=layer, target=score)
        else:
            maps, probs = grad_cam(model, x, layer=layer, target=score)
        images = ((x[:, 0].float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        yield {
            "rows": index.iloc[batch["position"].numpy()],
            "images": images.cpu().numpy(),
            "maps": maps.cpu().numpy(),
            "probs": probs.cpu().numpy(),
        }


def _box_factor(cfg: Config, cache_size: int) -> float:
    return cfg.image_size / cache_size  # eval inputs are the whole cache image, resized


def cam_examples(
    run: str | Path,
    patient_ids: Sequence[str],
    *,
    method: str = "cam",
    layer: str | None = None,
    target: str = "pneumonia",
    device: str = "cpu",
    cache: str | Path | None = None,
    checkpoint: str = BEST,
) -> dict[str, Any]:
    """Maps for a few patients of a run's cache (for notebooks): dict with `patientId`,
    `images` uint8 (N, S, S), `maps` (N, S, S) in [0, 1], `probs` (N,), `targets` (N,) and
    `boxes` (N lists of [x, y, w, h] in input pixels), in the order of `patient_ids`."""
    if len(patient_ids) == 0:
        raise ValueError("patient_ids: empty; pass at least one patient")
    loaded = load_run(run, device=device, cache=cache, checkpoint=checkpoint)
    cfg = loaded.config
    index, cache_stats = open_cache(cfg.cache)  # refused when damaged since preprocess
    index = index.set_index("patientId", drop=False)
    missing = [p for p in patient_ids if p not in index.index]
    if missing:
        raise ValueError(f"patient_ids: not in {cfg.cache}/{INDEX}: {missing[:3]}")
    rows = index.loc[list(patient_ids)]
    parts = list(
        _run_batches(
            loaded, rows, method=method, layer=layer, target=target, batch_size=max(1, len(rows))
        )
    )
    factor = _box_factor(cfg, cache_stats.size)
    return {
        "patientId": list(patient_ids),
        "images": np.concatenate([p["images"] for p in parts]),
        "maps": np.concatenate([p["maps"] for p in parts]),
        "probs": np.concatenate([p["probs"] for p in parts]),
        "targets": rows["target"].to_numpy(),
        "boxes": [scale_boxes(b, factor) for b in rows["boxes"]],
    }


def _run_batches(loaded: Run, rows: pd.DataFrame, **options: Any) -> Iterator[dict]:
    """`iter_cam_batches` over `rows` of a loaded run's cache, with the run's own input size,
    pixel statistics and warp rule; `options` are the rest of its keywords."""
    cfg = loaded.config
    return iter_cam_batches(
        loaded.model,
        cfg.cache,
        index=rows,
        image_size=cfg.image_size,
        stats=loaded.stats,
        gpu_augment=cfg.gpu_augment,
        **options,
    )


def cam_run(
    run: str | Path,
    split: str = "val",
    *,
    n_overlays: int = 16,
    method: str = "cam",
    batch_size: int = 64,
    seed: int = 0,
    layer: str | None = None,
    target: str = "pneumonia",
    threshold: float = POSITIVE_THRESHOLD,
    n_errors: int = 4,
    n_boot: int = 1000,
    tolerance: float = 0.0,
    device: str = "auto",
    cache: str | Path | None = None,
    tag: str = "",
    checkpoint: str = BEST,
    progress: bool = True,
    boxes: bool = True,
) -> dict[str, Any]:
    """CAM (or Grad-CAM) over one split of a run's cache, scored against the expert boxes.

    Scored images are the TRUE POSITIVES: target 1 and probability >= `threshold` (default
    0.5, fixed rather than the threshold `evaluate` tunes, so the scored set does not depend on
    whether evaluation ran): a map explains "why pneumonia" only where the model said so.
    Writes (each file complete or absent):
    - RUN/cam_<split>.csv: patientId, pointing_hit, energy_in_box, box_area_fraction;
    - RUN/cam_<split>.json: `summarize_localisation` (means, 95% bootstrap CIs with `seed`, the
      chance level `box_area_fraction` of both scores) plus method, layer and counts;
    - RUN/figures/cam_<split>/: overlays with the expert boxes of the first `n_overlays` true
      positives (`tp_<id>.png`) and of up to `n_errors` false negatives and false positives.
    Boxes come from the cache index (cache pixels), scaled to the input size. A `tag` (e.g.
    "gradcam_layer3") names a variant's files `cam_<split>_<tag>.*`, leaving the default ones.
    `cache` overrides the run's cache folder, `checkpoint` the file in RUN (e.g. "last.pt").
    `tolerance` (pixels at the input size) lets the pointing game count a peak that near a
    box as a hit (`localisation.pointing_game`); 0, the default, demands it inside.
    `target`: the logit explained (`iter_cam_batches`; a class's maps want their own `tag`).
    `boxes`: also RUN/boxes_<split>.csv and the summary's `rsna_map` (`cam.box_run`).
    Returns the summary, printed.
    """
    method = _method(method)
    run = Path(run)
    loaded = load_run(run, device=device, cache=cache, checkpoint=checkpoint)
    model, cfg, stats = loaded.model, loaded.config, loaded.stats
    layer = resolve_layer(model, layer)
    index, factor = _split_rows(cfg, stats, split)
    plan = boxes and _box_plan(loaded, index, split, batch_size=batch_size, progress=progress)
    batches: Iterable[dict[str, Any]] = _run_batches(
        loaded,
        index,
        method=method,
        layer=layer,
        target=target,
        batch_size=batch_size,
        workers=cfg.workers,
        progress=progress,
        desc=f"{method} {split}",
    )
    if plan:  # the boxes' maps are collected from this pass where they are its own
        batches = plan.watch(batches, method=method, layer=layer, target=target)
    limits = {"tp": n_overlays, "fn": n_errors, "fp": n_errors}
    scores, counts, kept = _score_split(
        batches, factor=factor, threshold=threshold, tolerance=tolerance, limits=limits
    )
    summary: dict[str, Any] = dict(
        split=split, method=method, layer=layer or default_layer(model), target=target,
        threshold=threshold, tolerance=tolerance, n_images=len(index), **counts,
        image_size=cfg.image_size, checkpoint=checkpoint,
        **summarize_localisation(scores, n_boot=n_boot, seed=seed),
    )  # fmt: skip
    if plan:
        summary |= plan.finish(split, n_boot=n_boot, seed=seed)
    _write_outputs(run, cam_stem(split, tag), scores=scores, summary=summary, kept=kept)
    print(format_localisation(summary))
    return summary


def _box_plan(
    loaded: Run, rows: pd.DataFrame, split: str, *, batch_size: int, progress: bool
) -> BoxPlan:
    """The boxes of `cam_run` on `rows` of `split`: the rule read, or fitted on val now."""
    cfg = loaded.config
    index, cache_stats = open_cache(cfg.cache)
    heights, widths, note = original_sizes(index, where=Path(cfg.cache) / INDEX)
    if note:
        print(note)
    sizes = pd.DataFrame(
        {"height": heights, "width": widths}, index=index["patientId"].astype(str).to_numpy()
    )

    def make_batches(part: pd.DataFrame, **options: Any) -> Iterator[dict]:
        return _run_batches(
            loaded,
            part,
            target="pneumonia",
            batch_size=batch_size,
            workers=cfg.workers,
            progress=progress,
            **options,
        )

    plan = BoxPlan(
        loaded, rows=rows, sizes=sizes, make_batches=make_batches, cache_size=cache_stats.size
    )
    val_rows = index[index["split"] == "val"].reset_index(drop=True)
    return plan.start(val_rows, split=split)


def _split_rows(cfg: Config, stats: CacheStats, split: str) -> tuple[pd.DataFrame, float]:
    """The index rows of `split` in the run's cache and the factor from cache to input pixels;
    refuses a cache of another size than the run was trained on."""
    if split not in ("train", "val", "test"):
        raise UsageError(f"split: expected train, val or test, got {split!r}")
    index, cache_stats = open_cache(cfg.cache)  # refused when damaged since preprocess
    cache_size = cache_stats.size
    if stats.size != cache_size:
        raise UsageError(
            f"{cfg.cache}: cache of {cache_size} px, but the run was trained on a "
            f"{stats.size} px cache; pass the run's cache"
        )
    index = index[index["split"] == split].reset_index(drop=True)
    if index.empty:
        raise UsageError(f"split={split!r}: no rows in {cfg.cache}/{INDEX}")
    return index, _box_factor(cfg, cache_size)


def _outcomes(
    target: np.ndarray, probs: np.ndarray, has_box: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Boolean masks (B,) per outcome. Only true positives with a box ("tp") can be scored;
    those without one are counted apart ("tp_no_box")."""
    said = probs >= threshold
    return {
        "tp": target & said & has_box,
        "fn": target & ~said,
        "fp": ~target & said,
        "tp_no_box": target & said & ~has_box,
    }


def _score_split(
    batches: Iterable[dict[str, Any]],
    *,
    factor: float,
    threshold: float,
    tolerance: float,
    limits: dict[str, int],
) -> tuple[pd.DataFrame, dict[str, int], dict[str, list]]:
    """Score the true positives of every batch of `iter_cam_batches` and keep the first
    `limits[kind]` images of each kind in KINDS for overlays.

    Returns (scores: one row per scored image, counts named as in COUNTS, kept: kind -> list of
    (name, image (S, S), map (S, S), boxes, prob)).
    """
    frames: list[pd.DataFrame] = []
    counts = dict.fromkeys(COUNTS.values(), 0)
    kept: dict[str, list] = {kind: [] for kind in KINDS}
    for b in batches:
        rows, probs = b["rows"], b["probs"]
        boxes = [scale_boxes(x, factor) for x in rows["boxes"]]
        has_box = np.array([len(x) > 0 for x in boxes], dtype=bool)
        masks = _outcomes(rows["target"].to_numpy() == 1, probs, has_box, threshold)
        for kind, mask in masks.items():
            counts[COUNTS[kind]] += int(mask.sum())
        tp = masks["tp"]
        if tp.any():
            ids = rows["patientId"].to_numpy()[tp].tolist()
            frames.append(
                localisation_scores(
                    ids, b["maps"][tp], [boxes[i] for i in np.flatnonzero(tp)], tolerance
                )
            )
        for kind in KINDS:
            for i in np.flatnonzero(masks[kind])[: max(0, limits[kind] - len(kept[kind]))]:
                pid = rows["patientId"].iloc[i]
                kept[kind].append(
                    (f"{kind}_{pid}", b["images"][i], b["maps"][i], boxes[i], probs[i])
                )
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    return scores, counts, kept


def _write_outputs(
    run: Path, stem: str, *, scores: pd.DataFrame, summary: dict[str, Any], kept: dict[str, list]
) -> None:
    """RUN/<stem>.csv, RUN/<stem>.json and RUN/figures/<stem>/, each complete or absent."""
    atomic_write(run / f"{stem}.csv", lambda p: scores.to_csv(p, index=False))
    # NaN (no true positives) is not JSON: written as null.
    plain = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in summary.items()}
    text = json.dumps(plain, indent=2)
    atomic_write(run / f"{stem}.json", text)
    _write_overlay_folder(figures_dir(run) / stem, kept)


def _write_overlay_folder(out: Path, kept: dict[str, list]) -> None:
    """Replace `out` with the overlays in `kept`; built beside it, then renamed into place."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for items in kept.values():
        if items:
            names, images, maps, boxes, probs = zip(*items, strict=True)
            save_overlays(
                tmp,
                names,
                images=images,
                maps=np.stack(maps),
                boxes=boxes,
                probs=np.asarray(probs),
            )
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
