"""A detector's batches: the classifier's augmentation and pixels, with the expert boxes moved by
the same per-image matrices, and the detector's boxes moved back into cache pixels.

The loader hands over raw uint8 cache images (B, S, S); `detector_input` warps them exactly as
the classifier's batches are warped (`core.augment.augment_batch_cpu` in uint8, or
`augment_batch_torch` on the device where `runtime.warp_on_device` says so, from the same
`batch_rng(seed, epoch, batch)` stream), applies the same contrast and brightness
(`to_model_input`), and keeps the matrices that moved each image. The detector normalises with
the cache's mean and std itself (`detect.model`), so its input stays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_convert

from pneumolib.core.augment import (
    AugmentPolicy,
    augment_batch_cpu,
    augment_batch_torch,
    batch_rng,
    to_model_input,
    warp_boxes,
)

MIN_SIDE = 2.0  # a box cut by the crop to a sliver under this many pixels is not a target

Boxes = list[list[float]]  # [[x, y, w, h], ...]


def detector_input(
    batch: dict,
    device: torch.device,
    *,
    size: int,
    policy: AugmentPolicy,
    train: bool,
    seed: int,
    on_device: bool,
) -> tuple[torch.Tensor, np.ndarray]:
    """A raw loader batch (uint8 `images` (B, S, S)) -> (float32 (B, 1, size, size) in [0, 1] on
    `device`, the forward matrices (B, 2, 3) cache pixels -> input pixels). Train batches are
    augmented from their own stream; eval batches are resized."""
    rng = batch_rng(seed, int(batch["epoch"]), int(batch["batch"])) if train else None
    images = batch["images"]
    if on_device:  # the GPU path: one grid_sample on the device, as the classifier's
        res = augment_batch_torch(
            images.to(device, non_blocking=True),
            out_size=size,
            policy=policy,
            rng=rng,
            train=train,
        )
        x = res["images"]
    else:  # the CPU path: rounded to uint8 as in the classifier's loader workers
        res = augment_batch_cpu(images.numpy(), out_size=size, policy=policy, rng=rng, train=train)
        x = torch.from_numpy(res["images"]).to(device)
    # Contrast and brightness as the classifier's; mean 0, std 1: the detector normalises.
    return to_model_input(x, gain=res["gain"], bias=res["bias"], mean=0.0, std=1.0), res["mats"]


def box_targets(
    boxes: Sequence[Boxes], mats: np.ndarray, *, size: int, label: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Each image's expert boxes (cache pixels, [x, y, w, h]) moved by its matrix (B, 2, 3) ->
    torchvision targets: `boxes` float32 (k, 4) [x1, y1, x2, y2] in input pixels, `labels`
    int64 (k,). An image without a box (a negative, or its box cropped away) gets (0, 4)."""
    out = []
    for image_boxes, mat in zip(boxes, mats, strict=True):
        moved = np.array(warp_boxes(image_boxes, mat, size), dtype=np.float32).reshape(-1, 4)
        moved = moved[(moved[:, 2] >= MIN_SIDE) & (moved[:, 3] >= MIN_SIDE)]
        xyxy = box_convert(torch.from_numpy(moved), in_fmt="xywh", out_fmt="xyxy")
        out.append(
            {
                "boxes": xyxy.to(device),
                "labels": torch.full((len(xyxy),), label, dtype=torch.int64, device=device),
            }
        )
    return out


def to_cache_pixels(
    detections: list[dict[str, torch.Tensor]], mats: np.ndarray, *, cache_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The detector's output per image (`boxes` [x1, y1, x2, y2] in input pixels, `scores`) and
    the matrices (B, 2, 3) that made its input -> (boxes (k, 4) [x, y, w, h] in cache pixels,
    scores (k,)), the form `evaluate.boxes.rsna_map` scores against index.csv's boxes."""
    out = []
    for det, mat in zip(detections, mats, strict=True):
        full = np.vstack([mat, [0.0, 0.0, 1.0]])
        back = np.linalg.inv(full)[:2]  # input pixels -> cache pixels
        xywh = box_convert(det["boxes"].detach().float().cpu(), in_fmt="xyxy", out_fmt="xywh")
        scores = det["scores"].detach().float().cpu().numpy().astype(np.float64)
        moved = [warp_boxes([b], back, cache_size) for b in xywh.tolist()]
        keep = [i for i, m in enumerate(moved) if m]  # a box wholly outside the image is dropped
        boxes = np.array([moved[i][0] for i in keep], dtype=np.float64).reshape(-1, 4)
        out.append((boxes, scores[keep]))
    return out
