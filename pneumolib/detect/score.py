"""A detector scored on a split: its boxes for every patient (cache pixels), the loss on the
split's expert boxes, and the challenge's metric at the confidence cut chosen on val.

The detector returns up to `model.MAX_BOXES` boxes an image down to confidence `MIN_SCORE`;
which of them to submit is a cut on the confidence, and an image with no expert box scores 0 as
soon as one box is left. The cut is chosen on val by the metric itself (`choose_box_threshold`)
and applied unchanged elsewhere, as the classifier's operating points are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pneumolib.base.metrics import binary_summary
from pneumolib.base.progress import bar as progress_bar
from pneumolib.core.augment import AugmentPolicy
from pneumolib.detect.batches import Boxes, box_targets, detector_input, to_cache_pixels
from pneumolib.evaluate.boxes import BoxesScores, rsna_map

# Confidence cuts tried on val: 0.05, 0.10, ..., 0.95.
BOX_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@contextlib.contextmanager
def losses_without_updates(model: nn.Module) -> Iterator[None]:
    """Within the block the model computes its training losses (torchvision's train mode) but
    BatchNorm uses and keeps its running statistics: a val loss that changes nothing."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class SplitBoxes:
    """A detector's pass over a split: boxes per patient and the mean loss on its expert boxes."""

    predictions: dict[str, BoxesScores]  # patientId -> (boxes (k, 4) [x, y, w, h], scores (k,))
    loss: float  # the detector's training loss on the split, mean per image


@torch.no_grad()
def split_boxes(
    model: nn.Module,
    loader,
    *,
    ids: Sequence[str],
    boxes: Sequence[Boxes],
    device: torch.device,
    size: int,
    cache_size: int,
    label: int,
    amp: torch.dtype | None = None,
    on_device: bool = False,
    progress: bool = False,
) -> SplitBoxes:
    """Run `model` over an eval loader of the split whose rows are `ids` (N,) with expert
    `boxes` (N lists, cache pixels): every patient's boxes in cache pixels, and the loss."""
    predictions: dict[str, BoxesScores] = {}
    total, seen = 0.0, 0
    was_training = model.training
    for batch in progress_bar(loader, desc="val boxes", leave=False, disable=not progress):
        pos = batch["position"].numpy()
        x, mats = detector_input(
            batch,
            device,
            size=size,
            policy=AugmentPolicy.identity(),
            train=False,
            seed=0,
            on_device=on_device,
        )
        targets = box_targets([boxes[i] for i in pos], mats, size=size, label=label, device=device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            with losses_without_updates(model):
                total += float(sum(model(x, targets).values())) * len(pos)
            model.eval()
            found = model(x)
        seen += len(pos)
        for i, pair in zip(pos, to_cache_pixels(found, mats, cache_size=cache_size), strict=True):
            predictions[ids[i]] = pair
    model.train(was_training)
    return SplitBoxes(predictions=predictions, loss=total / max(seen, 1))


def above(predictions: Mapping[str, BoxesScores], threshold: float) -> dict[str, BoxesScores]:
    """Each patient's boxes with confidence >= `threshold`."""
    return {pid: (b[s >= threshold], s[s >= threshold]) for pid, (b, s) in predictions.items()}


def choose_box_threshold(
    truth: Mapping[str, Boxes], predictions: Mapping[str, BoxesScores]
) -> tuple[float, float]:
    """(the confidence cut of `BOX_THRESHOLDS` with the highest `rsna_map` on this split, that
    score); the lowest cut among equals. NaN score (and the lowest cut) where no image counts
    at any cut (a split with no expert box, and no box found)."""
    values = [rsna_map(truth, above(predictions, t), n_boot=0)["value"] for t in BOX_THRESHOLDS]
    if all(math.isnan(v) for v in values):
        return BOX_THRESHOLDS[0], math.nan
    best = int(np.nanargmax(values))
    return BOX_THRESHOLDS[best], float(values[best])


def top_confidence(predictions: Mapping[str, BoxesScores], ids: Sequence[str]) -> np.ndarray:
    """Each patient's highest box confidence, 0 where the detector found none: (N,) in the
    order of `ids`, the image-level score the ROC AUC is computed on."""
    return np.array([float(predictions[p][1].max(initial=0.0)) for p in ids])


def val_row(
    found: SplitBoxes, *, ids: Sequence[str], boxes: Sequence[Boxes], targets: np.ndarray
) -> dict[str, float]:
    """The val columns of a detector epoch: `val_loss`, `val_rsna_map` at the val-chosen cut
    `val_box_threshold`, the images it counts (`val_n_images`) and the image-level `val_auc`."""
    truth = dict(zip(ids, boxes, strict=True))
    threshold, value = choose_box_threshold(truth, found.predictions)
    scored = rsna_map(truth, above(found.predictions, threshold), n_boot=0)
    summary = binary_summary(targets, top_confidence(found.predictions, ids))
    return {
        "val_loss": found.loss,
        "val_rsna_map": value,
        "val_box_threshold": threshold,
        "val_n_images": scored["n_images"],
        "val_auc": summary["auc"],
    }
