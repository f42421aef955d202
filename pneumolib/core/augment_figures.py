"""Figures for the augmentation notebook (02).

`show_transforms` draws what each augmentation does to one radiograph and its expert box,
`show_policy_grid` the whole policy on several images, `compare_warps` the CPU path (uint8,
loader workers) and the torch path (float, the GPU code) of the one warp side by side. Every
function returns a matplotlib Figure and touches no pyplot global state, so a notebook shows
it and a script saves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pneumolib.core.augment import (
    AugmentPolicy,
    augment_batch_cpu,
    augment_batch_torch,
    batch_rng,
    compose_affines,
    cpu_warp_name,
    sample_intensity,
    sample_params,
    to_model_input,
    warp_boxes,
    warp_cpu,
)

Boxes = Sequence[Sequence[float]]  # [[x, y, w, h], ...] in pixels of the image they belong to

# --- augmentation ------------------------------------------------------------------------


def single_transforms(policy: AugmentPolicy) -> dict[str, AugmentPolicy]:
    """One policy per augmentation, each with only that parameter of `policy` active.

    Keys: tilt, translation, scale, crop, intensity (and flip when `policy.hflip`); every
    other parameter is the identity's (whole image, no jitter).
    """
    ident, p = AugmentPolicy.identity(), policy
    out = {
        "tilt": dataclasses.replace(ident, rotate_deg=p.rotate_deg),
        "translation": dataclasses.replace(ident, translate=p.translate),
        "scale": dataclasses.replace(ident, scale_min=p.scale_min, scale_max=p.scale_max),
        "crop": dataclasses.replace(
            ident,
            crop_scale_min=p.crop_scale_min,
            crop_scale_max=p.crop_scale_max,
            crop_ratio_min=p.crop_ratio_min,
            crop_ratio_max=p.crop_ratio_max,
        ),
        "intensity": dataclasses.replace(ident, brightness=p.brightness, contrast=p.contrast),
    }
    if p.hflip:
        out["flip"] = dataclasses.replace(ident, hflip=True)
    return out


def augment_samples(
    image: np.ndarray,
    boxes: Boxes,
    *,
    policy: AugmentPolicy,
    out_size: int,
    rng: np.random.Generator | None,
    n: int,
) -> dict:
    """`n` augmented copies of one uint8 image (S, S), as the trainer makes them.

    Draws in the order of `augment.augment_batch_cpu` (same rng, same result) but keeps the
    sampled parameters for the panel titles. `rng=None` gives the eval transform (plain resize).
    Returns dict(images=float32 (n, out, out) in [0, 1] after contrast/brightness,
    boxes=list of n warped box lists, params=dict of (n, ...) arrays or None, gain, bias).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image: expected a square (S, S) array, got shape {image.shape}")
    batch = np.repeat(image[None].astype(np.uint8), n, axis=0)
    s = image.shape[0]
    if rng is None:
        res = augment_batch_cpu(batch, out_size=out_size, policy=policy, rng=None, train=False)
        mats, gain, bias, params = res["mats"], None, None, None
        warped = res["images"]
    else:
        params = sample_params(n, in_size=s, policy=policy, rng=rng)
        mats = compose_affines(params, s, out_size)
        gain, bias = sample_intensity(n, policy, rng)
        warped = warp_cpu(batch, mats, out_size)
    # mean 0, std 1: [0, 1]
    x = to_model_input(torch.from_numpy(warped), gain=gain, bias=bias, mean=0.0, std=1.0)
    return {
        "images": x[:, 0].numpy(),
        "boxes": [warp_boxes([list(b) for b in boxes], m, out_size) for m in mats],
        "params": params,
        "gain": gain,
        "bias": bias,
        "mats": mats,
    }


def _draw(ax, img: np.ndarray, boxes: Boxes, title: str = "") -> None:
    """Grey image in [0, 1] (or uint8) with its boxes outlined; no ticks."""
    vmax = 255 if img.dtype == np.uint8 else 1.0
    ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    for x, y, w, h in boxes:
        # imshow puts pixel centres at integer coords, so pixel-edge boxes start at -0.5.
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="#ff3b30", lw=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _describe(name: str, params: dict, gain, bias, i: int, in_size: int) -> str:
    """Short label of sample `i` for the panel title of transform `name`."""
    if name == "tilt":
        return f"{params['angle'][i]:+.1f}°"
    if name == "translation":
        dx, dy = params["shift"][i]
        return f"shift {dx:+.1%}, {dy:+.1%}"
    if name == "scale":
        return f"zoom ×{params['scale'][i]:.2f}"
    if name == "crop":
        w, h = params["crop"][i, 2:]
        return f"crop {w * h / in_size**2:.0%} area, w/h {w / h:.2f}"
    if name == "intensity":
        return f"contrast ×{gain[i]:.2f}, bright {bias[i]:+.2f}"
    if name == "flip":
        return "flipped" if params["flip"][i] else "not flipped"
    # the full policy: every drawn parameter, geometry on the first line, the rest below
    w, h = params["crop"][i, 2:]
    (dx, dy), flip = params["shift"][i], " flip" if params["flip"][i] else ""
    line1 = f"{params['angle'][i]:+.1f}°, ×{params['scale'][i]:.2f}, crop {w * h / in_size**2:.0%}"
    lines = [line1, f"shift {dx:+.1%}, {dy:+.1%}{flip}"]
    if gain is not None:
        lines.append(f"contrast ×{gain[i]:.2f}, bright {bias[i]:+.2f}")
    return "\n".join(lines)


def show_transforms(
    image: np.ndarray,
    boxes: Boxes,
    *,
    policy: AugmentPolicy,
    out_size: int,
    seed: int = 0,
    n: int = 4,
) -> Figure:
    """One row per augmentation alone (`single_transforms`) and a last row with the whole
    `policy`, `n` random draws each, beside the eval transform; the boxes warped along.

    `image` uint8 (S, S), `boxes` [[x, y, w, h], ...] in its pixels. Rows x (n + 1) axes.
    """
    rows = {**single_transforms(policy), "full policy": policy}
    fig = Figure(figsize=(1.9 * (n + 1), 2.0 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n + 1, squeeze=False)
    ev = augment_samples(image, boxes, policy=policy, out_size=out_size, rng=None, n=1)
    s = np.asarray(image).shape[0]
    for r, (name, pol) in enumerate(rows.items()):
        _draw(axes[r, 0], ev["images"][0], ev["boxes"][0], "eval (resize only)" if r == 0 else "")
        axes[r, 0].set_ylabel(name, fontsize=10)
        rng = np.random.default_rng([seed, r])
        res = augment_samples(image, boxes, policy=pol, out_size=out_size, rng=rng, n=n)
        for i in range(n):
            title = _describe(name, res["params"], res["gain"], res["bias"], i, s)
            _draw(axes[r, i + 1], res["images"][i], res["boxes"][i], title)
    fig.suptitle(f"augmentation, {s} px cache image -> {out_size} px network input (box in red)")
    return fig


def show_policy_grid(
    images: np.ndarray,
    boxes: Sequence[Boxes],
    *,
    policy: AugmentPolicy,
    out_size: int,
    seed: int = 0,
) -> Figure:
    """A batch through the trainer's own batch function (`augment.augment_batch_cpu`, one
    random stream per batch): eval transform on the top row, `policy` below, boxes warped.

    `images` uint8 (B, S, S); `boxes` one box list per image. 2 x B axes.
    """
    images = np.asarray(images, dtype=np.uint8)
    if len(boxes) != len(images):
        raise ValueError(
            f"boxes: expected one box list per image ({len(images)}), got {len(boxes)}"
        )
    ev = augment_batch_cpu(images, out_size=out_size, policy=policy, rng=None, train=False)
    rng = batch_rng(seed, 0, 0)
    tr = augment_batch_cpu(images, out_size=out_size, policy=policy, rng=rng, train=True)
    shown = to_model_input(
        torch.from_numpy(tr["images"]), gain=tr["gain"], bias=tr["bias"], mean=0.0, std=1.0
    )
    fig = Figure(figsize=(2.0 * len(images), 4.3), layout="constrained")
    axes = fig.subplots(2, len(images), squeeze=False)
    for i, b in enumerate(boxes):
        _draw(axes[0, i], ev["images"][i], warp_boxes(b, ev["mats"][i], out_size))
        _draw(axes[1, i], shown[i, 0].numpy(), warp_boxes(b, tr["mats"][i], out_size))
    axes[0, 0].set_ylabel("eval", fontsize=10)
    axes[1, 0].set_ylabel("train policy", fontsize=10)
    fig.suptitle("one training batch: each image its own draw from the policy")
    return fig


def warp_agreement(
    images: np.ndarray,
    *,
    policy: AugmentPolicy,
    out_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Warp uint8 (B, S, S) with the CPU path (loader workers: the warp on the CPU, rounded to
    uint8) and the torch path (the GPU code, float out, run on `device`) from the same random
    stream: what a user's own machine measures, whatever its OpenCV or GPU.

    Returns the differences in grey levels (0-255): max, mean, frac_over_1 (share of pixels off
    by more than 1); same_matrices (both paths drew the same matrices); device (where the
    torch path ran); cpu (uint8 (B, out, out)) and torch (float32 (B, out, out), grey levels),
    which `compare_warps` draws.
    """
    images = np.array(images, dtype=np.uint8)  # a writable copy: torch refuses a read-only map
    device = torch.device(device)
    cpu = augment_batch_cpu(
        images, out_size=out_size, policy=policy, rng=batch_rng(seed, 0, 0), train=True
    )
    tor = augment_batch_torch(
        torch.from_numpy(images).to(device),
        out_size=out_size,
        policy=policy,
        rng=batch_rng(seed, 0, 0),
        train=True,
    )
    warped = tor["images"][:, 0].cpu().numpy() * 255.0
    diff = np.abs(cpu["images"].astype(np.float32) - warped)
    return {
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "frac_over_1": float((diff > 1.0).mean()),
        "same_matrices": bool(np.allclose(cpu["mats"], np.asarray(tor["mats"]))),
        "device": device.type,
        "cpu": cpu["images"],
        "torch": warped.astype(np.float32),
    }


def compare_warps(agreement: Mapping, index: int = 0) -> Figure:
    """Image `index` of a `warp_agreement` result: the CPU path's warp, the torch path's
    (labelled with the device it ran on) and their difference; the title gives the numbers of
    the whole batch, the same ones `warp_agreement` returned. 3 axes (+ a colour bar)."""
    cpu, tor = agreement["cpu"][index], agreement["torch"][index]
    diff = np.abs(cpu.astype(np.float32) - tor)
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    axes = fig.subplots(1, 3)
    _draw(axes[0], cpu, [], f"CPU path: {cpu_warp_name()}, rounded to uint8")
    _draw(axes[1], tor / 255.0, [], f"torch path: grid_sample on {agreement['device']} (float)")
    im = axes[2].imshow(diff, cmap="magma", vmin=0, vmax=max(2.0, float(diff.max())))
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"|difference|, image {index} of {len(agreement['cpu'])}", fontsize=8)
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="grey levels")
    fig.suptitle(
        f"all {len(agreement['cpu'])} images: |difference| max {agreement['max']:.2f}, "
        f"mean {agreement['mean']:.3f} grey levels",
        fontsize=9,
    )
    return fig
