"""Test-time augmentation for `evaluate_run(..., tta=True)`: the deterministic variants and the
mean class probabilities over them."""

from __future__ import annotations

import numpy as np
import torch

from pneumolib.base.progress import bar as progress_bar
from pneumolib.core import tasks
from pneumolib.core.augment import compose_affines
from pneumolib.core.runtime import model_input
from pneumolib.data.labels import CacheStats

TTA_SHIFT = 0.04  # test-time shifts, fraction of the side
TTA_SCALES = (0.95, 1.05)  # test-time zooms about the centre


def tta_affines(in_size: int, out_size: int, hflip: bool = False) -> dict[str, np.ndarray]:
    """Deterministic test-time variants -> {name: forward matrix (2, 3), cache pixels ->
    input pixels}: identity (the plain validation resize), shifts of +-4% along x and y, zoom
    0.95 and 1.05, and a horizontal flip only for runs that trained with hflip."""
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


def predict_tta(model, loader, device, size: int, stats: CacheStats, mats, amp, on_device: bool):
    """Mean class probabilities over the variants `mats` {name: (2, 3)} for a loader of raw
    uint8 (B, S, S) batches -> (probabilities (N, K), targets (N,), positions (N,))."""
    probs, targets, positions = [], [], []
    with torch.no_grad():
        for batch in progress_bar(loader, desc="predict (TTA)", leave=False):
            images = batch["images"].numpy()  # (B, S, S) uint8
            total = torch.zeros((), dtype=torch.float64)
            for m in mats.values():
                x = model_input(
                    images,
                    np.repeat(m[None], len(images), 0),
                    size=size,
                    stats=stats,
                    device=device,
                    warp_on_device=on_device,
                )
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    total = total + tasks.probabilities(model(x)).double().cpu()
            probs.append((total / len(mats)).numpy())
            targets.append(batch["target"].numpy())
            positions.append(batch["position"].numpy())
    return np.concatenate(probs), np.concatenate(targets), np.concatenate(positions)
