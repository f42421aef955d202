"""Train-time augmentation as one affine matrix per image, applied in one warp.

Random resized crop, resize, tilt, zoom, shift and (optional) flip are all affine maps, so
they compose into a single 2x3 matrix per sample, and each image is resampled exactly once
(one interpolation, no blur or border loss stacking up from chained transforms). The
matrices are sampled on the CPU from a NumPy Generator seeded by (seed, epoch, batch), so a
batch is the same whatever the number of workers or the device. There is one warp, bilinear
at exact float coordinates, run where the batch lives: a batched `grid_sample` on the GPU
(`warp_torch`), or in CPU loader workers rounded to uint8 (`warp_cpu`: cv2.warpAffine where
it is exact, OpenCV 5, else grid_sample); contrast/brightness and normalisation
follow in `to_model_input` (or, on the CPU, the same arithmetic as one lookup table per
image: `intensity_luts`).

Matrices map source pixel coordinates (cache image, side `in_size`) to output pixel
coordinates (side `out_size`), OpenCV convention: pixel centres at integer coordinates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentPolicy:
    rotate_deg: float = 5.0  # random tilt, +- degrees
    translate: float = 0.05  # random shift, fraction of the output side
    scale_min: float = 0.9  # random zoom range (about the output centre)
    scale_max: float = 1.1
    crop_scale_min: float = 0.35  # random-resized-crop area range (fraction of the image)
    crop_scale_max: float = 1.0
    crop_ratio_min: float = 3 / 4  # random-resized-crop aspect-ratio (w / h) range
    crop_ratio_max: float = 4 / 3
    brightness: float = 0.1  # +- additive brightness, in [0, 1] intensity units
    contrast: float = 0.1  # +- relative contrast change
    hflip: bool = False  # horizontal flip with probability 1/2

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentPolicy:
        """Take the augmentation fields (same names) from a `Config`."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    @classmethod
    def identity(cls) -> AugmentPolicy:
        """A policy whose every sample is the identity (whole image, no jitter)."""
        return cls(
            rotate_deg=0.0,
            translate=0.0,
            scale_min=1.0,
            scale_max=1.0,
            crop_scale_min=1.0,
            crop_scale_max=1.0,
            crop_ratio_min=1.0,
            crop_ratio_max=1.0,
            brightness=0.0,
            contrast=0.0,
            hflip=False,
        )


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The augmentation stream of one batch; independent of worker count and device."""
    return np.random.default_rng([seed, epoch, batch])


# --- geometry ------------------------------------------------------------------------


def sample_params(
    n: int, *, in_size: int, policy: AugmentPolicy, rng: np.random.Generator, tries: int = 10
) -> dict[str, np.ndarray]:
    """Draw per-sample parameters: crop (n, 4) [x0, y0, w, h] in source pixel-edge units,
    angle (n,) degrees, scale (n,), shift (n, 2) as a fraction of the side, flip (n,) bool."""
    area = in_size**2 * rng.uniform(policy.crop_scale_min, policy.crop_scale_max, (n, tries))
    log_r = rng.uniform(
        math.log(policy.crop_ratio_min), math.log(policy.crop_ratio_max), (n, tries)
    )
    w = np.sqrt(area * np.exp(log_r))
    h = np.sqrt(area / np.exp(log_r))
    # Like torchvision: keep the first candidate that fits, else fall back to the whole image.
    fits = (w <= in_size * (1 + 1e-9)) & (h <= in_size * (1 + 1e-9))
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    w = np.where(fits.any(axis=1), np.minimum(w[rows, first], in_size), in_size)
    h = np.where(fits.any(axis=1), np.minimum(h[rows, first], in_size), in_size)
    x0 = rng.uniform(0.0, 1.0, n) * (in_size - w)
    y0 = rng.uniform(0.0, 1.0, n) * (in_size - h)
    return {
        "crop": np.stack([x0, y0, w, h], axis=1),
        "angle": rng.uniform(-policy.rotate_deg, policy.rotate_deg, n),
        "scale": rng.uniform(policy.scale_min, policy.scale_max, n),
        "shift": rng.uniform(-policy.translate, policy.translate, (n, 2)),
        "flip": (rng.random(n) < 0.5) & bool(policy.hflip),
    }


def _affine3(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, tx, ty) -> np.ndarray:
    """Batch of 3x3 matrices [[a, b, tx], [c, d, ty], [0, 0, 1]] from (n,) arrays."""
    n = len(a)
    m = np.zeros((n, 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a, b, tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = c, d, ty
    m[:, 2, 2] = 1.0
    return m


def compose_affines(params: dict[str, np.ndarray], in_size: int, out_size: int) -> np.ndarray:
    """(n, 2, 3) forward matrices: crop box -> out_size, then tilt/zoom/shift about the
    output centre, then optional horizontal flip."""
    x0, y0, w, h = params["crop"].T
    sx, sy, zero = out_size / w, out_size / h, np.zeros(len(w))
    # Pixel centres sit at integer coords, edges at +-0.5: u = (x + 0.5 - x0) * out / w - 0.5.
    crop = _affine3(sx, zero, zero, sy, (0.5 - x0) * sx - 0.5, (0.5 - y0) * sy - 0.5)
    # u' = s R (u - c) + c + t; with y pointing down, a positive angle turns clockwise.
    rad = np.deg2rad(params["angle"])
    cos, sin = params["scale"] * np.cos(rad), params["scale"] * np.sin(rad)
    c = (out_size - 1) / 2
    tx, ty = params["shift"].T * out_size
    spin = _affine3(cos, -sin, sin, cos, c - cos * c + sin * c + tx, c - sin * c - cos * c + ty)
    # Mirror about the vertical centre line: u'' = (out - 1) - u'.
    f = params["flip"]
    flip = _affine3(
        np.where(f, -1.0, 1.0), zero, zero, zero + 1, np.where(f, out_size - 1.0, 0), zero
    )
    return (flip @ spin @ crop)[:, :2, :]


def sample_affines(
    n: int, *, in_size: int, out_size: int, policy: AugmentPolicy, rng: np.random.Generator
) -> np.ndarray:
    """(n, 2, 3) float64 random forward matrices, source pixels -> output pixels."""
    params = sample_params(n, in_size=in_size, policy=policy, rng=rng)
    return compose_affines(params, in_size, out_size)


def eval_affines(n: int, in_size: int, out_size: int) -> np.ndarray:
    """(n, 2, 3) deterministic matrices: plain resize of the whole image to out_size."""
    params = {
        "crop": np.tile([0.0, 0.0, in_size, in_size], (n, 1)),
        "angle": np.zeros(n),
        "scale": np.ones(n),
        "shift": np.zeros((n, 2)),
        "flip": np.zeros(n, dtype=bool),
    }
    return compose_affines(params, in_size, out_size)


def warp_boxes(
    boxes: Sequence[Sequence[float]], mat: np.ndarray, out_size: int
) -> list[list[float]]:
    """Boxes [x, y, w, h] (pixel-edge units) -> axis-aligned box of the 4 warped corners,
    clipped to the output; boxes left with no area inside the output are dropped."""
    m = np.asarray(mat, dtype=np.float64)
    out = []
    for x, y, w, h in boxes:
        # Box edges are pixel edges: shift to centre coords, warp, shift back.
        corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]) - 0.5
        warped = corners @ m[:, :2].T + m[:, 2] + 0.5
        lo = np.clip(warped.min(axis=0), 0, out_size)
        hi = np.clip(warped.max(axis=0), 0, out_size)
        if (hi > lo).all():
            out.append([float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])])
    return out


# --- warps ---------------------------------------------------------------------------


def _check(images: Any, mats: Any, name: str) -> None:
    if images.ndim != 3:
        raise ValueError(f"{name}: expected images of shape (B, S, S), got {tuple(images.shape)}")
    if tuple(mats.shape) != (images.shape[0], 2, 3):
        raise ValueError(
            f"{name}: expected mats of shape ({images.shape[0]}, 2, 3), got {tuple(mats.shape)}"
        )


def affines_to_theta(mats: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """Forward pixel matrices (B, 2, 3) -> `affine_grid` theta (B, 2, 3): the inverse map
    in normalised coords (align_corners=False: -1 and 1 are the outer pixel edges)."""
    m = np.zeros((len(mats), 3, 3))
    m[:, :2], m[:, 2, 2] = mats, 1.0
    # Output normalised -> output pixels: u = (un + 1) * out / 2 - 0.5.
    denorm = np.array(
        [[out_size / 2, 0, (out_size - 1) / 2], [0, out_size / 2, (out_size - 1) / 2], [0, 0, 1]]
    )
    # Source pixels -> source normalised: xn = (2 x + 1) / S - 1.
    norm = np.array(
        [[2 / in_size, 0, 1 / in_size - 1], [0, 2 / in_size, 1 / in_size - 1], [0, 0, 1]]
    )
    return (norm @ np.linalg.inv(m) @ denorm)[:, :2, :]


def sampling_grid(theta: torch.Tensor, out_size: int) -> torch.Tensor:
    """theta (B, 2, 3) -> grid (B, out, out, 2) for `grid_sample`: what
    `affine_grid(theta, (B, 1, out, out), align_corners=False)` gives (to float rounding),
    built as one broadcast sum of a row term and a column term, as the map is affine
    (affine_grid's batched matrix product takes longer than the warp itself on a CPU)."""
    n = len(theta)
    # Output pixel centres in normalised coords: (2 u + 1) / out - 1 for u = 0 .. out - 1.
    base = torch.arange(out_size, dtype=theta.dtype, device=theta.device)
    base = base.mul_(2.0).add_(1.0).div_(out_size).sub_(1.0).view(1, out_size, 1)
    col = base * theta[:, :, 0].view(n, 1, 2)  # (B, out, 2): x_j * theta[:, :, 0]
    row = base * theta[:, :, 1].view(n, 1, 2) + theta[:, :, 2].view(n, 1, 2)
    return row.view(n, out_size, 1, 2) + col.view(n, 1, out_size, 2)


def _grid_sample(x: torch.Tensor, mats: np.ndarray, out_size: int) -> torch.Tensor:
    """float (B, 1, S, S) -> float (B, 1, out, out) on x's device: bilinear at exact float
    coordinates, zeros outside the image."""
    theta = affines_to_theta(np.asarray(mats, dtype=np.float64), x.shape[-1], out_size)
    grid = sampling_grid(torch.as_tensor(theta, dtype=torch.float32, device=x.device), out_size)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_torch(
    images: torch.Tensor, mats: np.ndarray | torch.Tensor, out_size: int
) -> torch.Tensor:
    """uint8 (B, S, S) on any device -> float32 (B, 1, out, out) in [0, 1] on that device,
    with one batched grid_sample (bilinear, zero padding, exact float coordinates)."""
    _check(images, mats, "warp_torch")
    if isinstance(mats, torch.Tensor):
        mats = mats.detach().cpu().double().numpy()
    return _grid_sample(images.unsqueeze(1).float().div_(255.0), mats, out_size)


def _warp_cv2(images: np.ndarray, mats: np.ndarray, out_size: int) -> np.ndarray:
    out = np.empty((len(images), out_size, out_size), dtype=np.uint8)
    for i, (img, m) in enumerate(zip(images, mats, strict=True)):
        out[i] = cv2.warpAffine(
            img,
            np.asarray(m, dtype=np.float64),
            (out_size, out_size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return out


@functools.cache
def cv2_warp_is_exact() -> bool:
    """Whether this OpenCV's `cv2.warpAffine` is exact bilinear, i.e. within half a grey level
    (its rounding to uint8) of `grid_sample` on 0/255 edges, the hardest case. Measured: True
    on OpenCV 5.1; False on 4.8 and 4.12, which round the source coordinates to 1/32 pixel
    (a sample moves up to 1/64 pixel: on an edge of 255 grey levels per pixel, up to 4)."""
    yy, xx = np.mgrid[:32, :32]
    img = ((yy // 3 + xx // 5) % 2 * 255).astype(np.uint8)[None]
    params = {
        "crop": np.array([[0.3, 0.7, 29.1, 30.6]]),
        "angle": np.array([7.3]),
        "scale": np.array([1.05]),
        "shift": np.array([[0.013, -0.021]]),
        "flip": np.array([False]),
    }
    mats = compose_affines(params, 32, 32)
    ours = _grid_sample(torch.from_numpy(img).unsqueeze(1).float(), mats, 32)[:, 0].numpy()
    return bool(np.abs(_warp_cv2(img, mats, 32) - ours).max() <= 0.5 + 0.02)


def cpu_warp_name() -> str:
    """Which warp `warp_cpu` runs on this machine, for labels: "cv2.warpAffine" or
    "grid_sample"."""
    return "cv2.warpAffine" if cv2_warp_is_exact() else "grid_sample"


def warp_cpu(images: np.ndarray, mats: np.ndarray, out_size: int) -> np.ndarray:
    """uint8 (B, S, S) -> uint8 (B, out, out): the warp of `warp_torch` rounded to whole grey
    levels (uint8 keeps loader batches small and lets `apply_luts` normalise them), so within
    half a grey level of it on every OpenCV. Where `cv2_warp_is_exact` (OpenCV 5), that is
    `cv2.warpAffine` (4x faster on a loader's single thread); elsewhere `grid_sample` itself.
    OpenCV 4.8-4.12's warpAffine would differ by up to 3.7 grey levels on the demo cache (224
    px) and 7.3 on 0/255 edges."""
    _check(images, mats, "warp_cpu")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if cv2_warp_is_exact():
        return _warp_cv2(images, mats, out_size)
    x = _grid_sample(torch.from_numpy(images).unsqueeze(1).float(), mats, out_size)
    return x[:, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()


# --- intensity and normalisation -----------------------------------------------------


def sample_intensity(
    n: int, policy: AugmentPolicy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample contrast gain in [1 - c, 1 + c] and brightness bias in [-b, b], float32 (n,)."""
    gain = 1.0 + rng.uniform(-policy.contrast, policy.contrast, n)
    bias = rng.uniform(-policy.brightness, policy.brightness, n)
    return gain.astype(np.float32), bias.astype(np.float32)


def to_model_input(
    x: torch.Tensor,
    *,
    gain: np.ndarray | torch.Tensor | None,
    bias: np.ndarray | torch.Tensor | None,
    mean: float,
    std: float,
) -> torch.Tensor:
    """uint8 (B, H, W) or float (B, 1, H, W) in [0, 1] -> float32 (B, 1, H, W) on x's device:
    contrast/brightness about mid-grey (clamped to [0, 1]) if given, then (x - mean) / std."""
    unit = 1.0
    if x.dtype == torch.uint8:
        x, unit = x.unsqueeze(1), 1.0 / 255.0
    else:
        x = x.float()  # a no-op for float32; `x` is never modified below
    # One new tensor, then in place: on a CPU, allocating (B, 1, H, W) temporaries costs more
    # than the arithmetic (4x slower for a 64 x 224 x 224 batch).
    if gain is None and bias is None:
        return torch.mul(x, unit / std).sub_(mean / std)
    n = len(x)
    g = torch.ones(n) if gain is None else torch.as_tensor(gain, dtype=torch.float32)
    b = torch.zeros(n) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
    g, b = (t.to(x.device).view(n, 1, 1, 1) for t in (g, b))
    # (x * unit - 0.5) * g + 0.5 + b  ==  x * (unit * g) + (0.5 - 0.5 * g + b)
    y = torch.mul(x, g * unit).add_(0.5 - 0.5 * g + b).clamp_(0.0, 1.0)
    return y.sub_(mean).div_(std)


def intensity_luts(
    n: int,
    *,
    gain: np.ndarray | None,
    bias: np.ndarray | None,
    mean: float,
    std: float,
) -> np.ndarray:
    """float32 (n, 256): row i maps a uint8 value of image i to exactly what `to_model_input`
    makes of it (same arithmetic: the table is `to_model_input` applied to the values 0-255)."""
    values = torch.arange(256, dtype=torch.uint8).expand(n, 1, 256)
    out = to_model_input(values, gain=gain, bias=bias, mean=mean, std=std)
    return out.reshape(n, 256).numpy()


def apply_luts(images: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W) and float32 tables (B, 256) -> float32 (B, 1, H, W), one `cv2.LUT` per
    image: contrast, brightness and normalisation in one pass over the pixels, no temporaries."""
    if images.dtype != np.uint8 or images.ndim != 3 or luts.shape != (len(images), 256):
        raise ValueError(
            f"apply_luts: expected uint8 (B, H, W) and (B, 256) tables, got {images.dtype} "
            f"{images.shape} and {luts.shape}"
        )
    out = np.empty((len(images), 1, *images.shape[1:]), np.float32)
    for i, (img, lut) in enumerate(zip(images, luts.astype(np.float32, copy=False), strict=True)):
        cv2.LUT(img, lut, dst=out[i, 0])
    return out


# --- whole batches -------------------------------------------------------------------


def _batch_params(
    n: int, s: int, out_size: int, policy: AugmentPolicy, rng: Any, train: bool
) -> tuple:
    # Same draw order on both paths, so one rng gives the same augmentation on CPU and GPU.
    if not train:
        return eval_affines(n, s, out_size), None, None
    mats = sample_affines(n, in_size=s, out_size=out_size, policy=policy, rng=rng)
    return (mats, *sample_intensity(n, policy, rng))


def augment_batch_cpu(
    images: np.ndarray,
    *,
    out_size: int,
    policy: AugmentPolicy,
    rng: np.random.Generator | None,
    train: bool,
) -> dict[str, Any]:
    """uint8 (B, S, S) -> dict(images=uint8 (B, out, out), gain, bias, mats (B, 2, 3)).
    Eval (train=False): plain resize, gain and bias None. Boxes: `warp_boxes(b, mats[i], out)`."""
    mats, gain, bias = _batch_params(len(images), images.shape[-1], out_size, policy, rng, train)
    return {"images": warp_cpu(images, mats, out_size), "gain": gain, "bias": bias, "mats": mats}


def augment_batch_torch(
    images: torch.Tensor,
    *,
    out_size: int,
    policy: AugmentPolicy,
    rng: np.random.Generator | None,
    train: bool,
) -> dict[str, Any]:
    """uint8 tensor (B, S, S) on a device -> dict(images=float32 (B, 1, out, out) in [0, 1]
    on that device, gain, bias (NumPy float32 (B,) or None), mats (B, 2, 3))."""
    mats, gain, bias = _batch_params(len(images), images.shape[-1], out_size, policy, rng, train)
    return {"images": warp_torch(images, mats, out_size), "gain": gain, "bias": bias, "mats": mats}
