"""The inference layer: device and precision, where the warp runs, batches on the device, and
batched prediction. The trainer, `predict`, `cam`, `evaluate` and `tune` all go through it, so
each of these rules is written once.
"""

from __future__ import annotations

import numpy as np
import torch

from pneumolib.base.errors import RunError
from pneumolib.base.progress import bar as progress_bar
from pneumolib.core import tasks
from pneumolib.core.augment import (
    AugmentPolicy,
    apply_luts,
    augment_batch_torch,
    batch_rng,
    to_model_input,
    warp_cpu,
    warp_torch,
)
from pneumolib.data.cache_stats import CacheStats

DEVICES = ("auto", "cpu", "cuda")  # what the options offer (Config.device, predict --device)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when visible, else CPU; "cuda" without a GPU -> one-line RunError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but no CUDA GPU is visible")
    return torch.device(name)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 (with a GradScaler) on older GPUs, None on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def warp_on_device(device: torch.device, *, gpu_augment: bool = True) -> bool:
    """The one rule for where the geometric warp runs: on CUDA with `gpu_augment` (the default),
    whole batches on the GPU; everywhere else in the loader workers (the same warp, rounded to
    uint8). Training, validation, prediction and CAMs all ask here, so they see the same
    pixels."""
    return device.type == "cuda" and gpu_augment


def model_input(
    images: np.ndarray,
    mats: np.ndarray,
    *,
    size: int,
    stats: CacheStats,
    device: torch.device,
    warp_on_device: bool,
) -> torch.Tensor:
    """uint8 (B, S, S) cache-size images + forward matrices (B, 2, 3) -> normalised float32
    (B, 1, size, size) on `device`. The warp is the one validation used: `warp_cpu` (uint8,
    as in loader workers) or, when `warp_on_device`, `warp_torch` on the device (GPU path)."""
    if warp_on_device:
        x = warp_torch(torch.from_numpy(np.ascontiguousarray(images)).to(device), mats, size)
    else:
        x = torch.from_numpy(warp_cpu(images, mats, size)).to(device)
    return to_model_input(x, gain=None, bias=None, mean=stats.mean, std=stats.std)


def to_device_batch(
    batch: dict,
    device: torch.device,
    *,
    size: int,
    policy: AugmentPolicy,
    stats: CacheStats,
    train: bool,
    seed: int,
    channels_last: bool,
) -> torch.Tensor:
    """A loader batch -> normalised float (B, 1, size, size) on `device`.

    Batches warped in the workers are normalised here: through their per-image lookup tables
    (`luts`, one `cv2.LUT` pass on the CPU) when the loader made them, else with `gain`/`bias`
    on the device; raw (B, S, S) uint8 batches are warped on the device in one `grid_sample`
    (the GPU path). All three give the same numbers.
    """
    if "luts" in batch:
        x = torch.from_numpy(apply_luts(batch["images"].numpy(), batch["luts"].numpy()))
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    x = batch["images"].to(device, non_blocking=True)
    gain, bias = batch.get("gain"), batch.get("bias")
    warped_in_worker = x.shape[-1] == size and (not train or "gain" in batch)
    if not warped_in_worker:
        rng = batch_rng(seed, int(batch["epoch"]), int(batch["batch"])) if train else None
        res = augment_batch_torch(x, out_size=size, policy=policy, rng=rng, train=train)
        x, gain, bias = res["images"], res["gain"], res["bias"]
    x = to_model_input(x, gain=gain, bias=bias, mean=stats.mean, std=stats.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    loader,
    *,
    device: torch.device,
    size: int,
    stats: CacheStats,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `model` over an eval loader -> (logits (N, K) float32, the batches' targets (N,),
    positions (N,))."""
    was_training = model.training
    model.eval()
    logits, targets, positions = [], [], []
    for batch in progress_bar(loader, desc="predict", leave=False, disable=not progress):
        x = to_device_batch(
            batch,
            device,
            size=size,
            policy=AugmentPolicy.identity(),
            stats=stats,
            train=False,
            seed=0,
            channels_last=channels_last,
        )
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits.append(model(x).float().cpu().numpy())
        targets.append(batch["target"].numpy())
        positions.append(batch["position"].numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(targets), np.concatenate(positions)


def predict_probs(
    model: torch.nn.Module,
    loader,
    *,
    device: torch.device,
    size: int,
    stats: CacheStats,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `model` over an eval loader -> (pneumonia probabilities (N,), targets (N,),
    positions (N,)); for either task (`tasks.pneumonia_probability`)."""
    logits, targets, positions = predict_logits(
        model,
        loader,
        device=device,
        size=size,
        stats=stats,
        amp=amp,
        channels_last=channels_last,
        progress=progress,
    )
    return tasks.pneumonia_probability(torch.from_numpy(logits)).numpy(), targets, positions
