"""Class activation maps: where in the radiograph the network found its evidence.

Two methods, one shape of answer. Both capture the feature map `A` (B, K, h, w) of one layer
in a single forward pass and return `ReLU(sum_k weight_k * A_k)`, upsampled to the input size
and scaled to [0, 1]; they differ only in how the channel weights are found:

- `cam` (Zhou et al. 2016): exact for global-average-pooling + linear heads (ResNet, DenseNet,
  EfficientNet): the weights are the head's own weights, so `mean(CAM) + bias == logit`.
- `grad_cam` (Selvaraju et al. 2017): any convolutional layer; the weights are the spatial
  means of the target's gradient. On the last layer of a GAP + linear head it equals `cam`.

"What to explain" is a target object (`BinaryLogitTarget`), kept apart from "how". Maps in
[0, 1] are kept apart from drawing (`overlay`, `save_overlays`) and from scoring them against
the expert boxes (`pneumolib.localisation`). `cam_run` does all of it for a trained run
folder (`python -m pneumolib cam --run RUN`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pneumolib.localisation import (
    Boxes,
    as_numpy,
    format_localisation,
    localisation_scores,
    parse_boxes,
    scale_boxes,
    summarize_localisation,
)
from pneumolib.progress import bar as progress_bar
from pneumolib.runtime import resolve_device, to_device_batch, warp_on_device

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# --- what to explain ----------------------------------------------------------------


class BinaryLogitTarget:
    """The score to explain for a one-logit head: the logit (evidence for pneumonia) when
    `positive`, else its negative (evidence against). Call on logits (B, 1) or (B,) -> (B,)."""

    def __init__(self, positive: bool = True) -> None:
        self.positive = positive

    def __call__(self, logits: Tensor) -> Tensor:
        score = logits.reshape(logits.shape[0], -1)[:, 0]
        return score if self.positive else -score

    def __repr__(self) -> str:
        return f"BinaryLogitTarget(positive={self.positive})"


# --- hooks and model plumbing ---------------------------------------------------------


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule of `model` with dotted `name` (e.g. "layer4", "features.denseblock4")."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(
            f"layer={name!r}: model has no such submodule (top level: {names})"
        ) from None


class FeatureHook:
    """Records the output of one layer on every forward pass while the `with` block runs.

    With `requires_grad=True` each recorded map is a fresh leaf tensor that the rest of the
    forward pass is built on, so `torch.autograd.grad(score, hook.features[-1])` works even
    when the backbone is frozen, and no gradient reaches the parameters. The hook is removed on
    exit, also when the forward pass raises.
    """

    def __init__(self, model: nn.Module, layer: str, requires_grad: bool = False) -> None:
        self.layer = layer
        self.module = get_layer(model, layer)
        self.requires_grad = requires_grad
        self.features: list[Tensor] = []  # one (B, K, h, w) map per forward pass
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = getattr(output, "shape", type(output).__name__)
            raise ValueError(f"layer={self.layer!r}: expected a (B, K, h, w) output, got {shape}")
        if self.requires_grad:
            leaf = output.detach().requires_grad_(True)
            self.features.append(leaf)
            # A copy goes on, so in-place ops downstream (DenseNet's ReLU) never touch the leaf.
            return leaf.clone()
        # Copy: a later in-place op would otherwise change what we recorded.
        self.features.append(output.detach().clone())
        return None

    def __enter__(self) -> FeatureHook:
        self.features = []
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class _EvalMode:
    """Puts every module in eval mode and restores each one's own flag on exit (a model in
    feature-extraction mode may mix trained and frozen-eval BatchNorm layers)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, training in self.saved:
            m.training = training


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile / DataParallel wrappers (their names differ)."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _default_layer(model: nn.Module, layer: str | None) -> str:
    if layer is not None:
        return layer
    from pneumolib.models import feature_layer_name  # lazy: cam works on any network

    return feature_layer_name(model)


def _default_relu(model: nn.Module, layer: str, relu_features: bool | None) -> bool:
    """DenseNet applies F.relu after `features`; ResNet/EfficientNet maps are post-activation."""
    if relu_features is not None:
        return relu_features
    from torchvision.models import DenseNet

    parent_name, _, last = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return isinstance(parent, DenseNet) and last == "features"


def _forward(model: nn.Module, x: Tensor, layer: str, requires_grad: bool) -> tuple[Tensor, Tensor]:
    """One forward pass in eval mode recording `layer`: (features (B, K, h, w), logits (B, 1))."""
    if x.ndim != 4:
        raise ValueError(f"x: expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    grad_mode = torch.enable_grad() if requires_grad else torch.no_grad()
    with _EvalMode(model), FeatureHook(model, layer, requires_grad) as hook, grad_mode:
        logits = model(x)
    if not hook.features:
        raise ValueError(f"layer={layer!r}: the layer did not run in the model's forward pass")
    if logits.ndim > 2 or logits.reshape(len(x), -1).shape[1] != 1:
        raise ValueError(f"model: expected one logit per image, got output {tuple(logits.shape)}")
    return hook.features[-1], logits.reshape(len(x), 1)


def _weighted_maps(features: Tensor, weights: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU(sum_k w_k A_k) upsampled to `size`, each map scaled to [0, 1] by its maximum.

    features (B, K, h, w), weights (B, K) -> (B, H, W). Dividing by the maximum (not min-max)
    keeps 0 meaning "no evidence"; a map with no positive evidence stays all zero.
    """
    maps = torch.einsum("bk,bkhw->bhw", weights.float(), features.float()).relu()
    maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(dim=1)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return (maps / peak[:, None, None]).clamp(0, 1)


# --- how: CAM and Grad-CAM ------------------------------------------------------------


def cam_weights(linear: nn.Linear, target: BinaryLogitTarget | None = None) -> Tensor:
    """Channel weights (K,) of the target's score as a function of the pooled features:
    d target(linear(z)) / dz, which for a linear head is the head's weight row (negated for
    `positive=False`). Holds for any target that is linear in the logits."""
    target = target or BinaryLogitTarget()
    w = linear.weight
    z = torch.zeros(1, linear.in_features, device=w.device, dtype=w.dtype, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(target(linear(z)).sum(), z)
    return grad[0].detach()


def feature_maps(
    model: nn.Module, x: Tensor, layer: str | None = None, relu_features: bool | None = None
) -> tuple[Tensor, Tensor]:
    """The features the head pools and the logits, from one forward pass in eval mode.

    x (B, C, H, W) -> (features (B, K, h, w), logits (B, 1)). For a GAP + linear head,
    `(features * cam_weights(linear)[:, None, None]).sum(1).mean((1, 2)) + bias == logit`.
    """
    model = _unwrap(model)
    layer = _default_layer(model, layer)
    features, logits = _forward(model, x, layer, requires_grad=False)
    if _default_relu(model, layer, relu_features):
        features = features.relu()
    return features, logits


def cam(
    model: nn.Module,
    x: Tensor,
    layer: str | None = None,
    linear: nn.Linear | None = None,
    relu_features: bool | None = None,
    target: BinaryLogitTarget | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact CAM for a global-pooling + linear head, the whole batch in one forward pass.

    x (B, C, H, W) normalised input -> (maps (B, H, W) in [0, 1], probabilities (B,)).
    `layer` is the dotted name of the module whose output the head pools and `linear` the
    final one-logit layer (defaults: `pneumolib.models.feature_layer_name` and `head`).
    `relu_features` applies ReLU to the captured map (default: on for DenseNet "features").
    """
    model = _unwrap(model)
    layer = _default_layer(model, layer)
    if linear is None:
        from pneumolib.models import head

        linear = head(model)
    features, logits = feature_maps(model, x, layer, relu_features)
    if features.shape[1] != linear.in_features:
        raise ValueError(
            f"linear: expects {linear.in_features} features, layer={layer!r} has "
            f"{features.shape[1]} channels; pass the layer the head pools"
        )
    weights = cam_weights(linear, target).to(features.device).expand(len(features), -1)
    maps = _weighted_maps(features, weights, tuple(x.shape[-2:]))
    return maps, torch.sigmoid(logits[:, 0].float())


def grad_cam(
    model: nn.Module,
    x: Tensor,
    layer: str | None = None,
    target: BinaryLogitTarget | None = None,
    relu_features: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM for any convolutional layer, the whole batch in one forward pass.

    x (B, C, H, W) -> (maps (B, H, W) in [0, 1], probabilities (B,)). Channel weights are the
    spatial means of d target / d A; `layer` is a dotted module name (default: the model's last
    feature layer). Parameters' `.grad` are left untouched.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("grad_cam needs gradients: call it outside torch.inference_mode()")
    model = _unwrap(model)
    layer = _default_layer(model, layer)
    target = target or BinaryLogitTarget()
    features, logits = _forward(model, x, layer, requires_grad=True)
    with torch.enable_grad():
        # Images are independent in eval mode, so one backward of the sum gives every image.
        (grads,) = torch.autograd.grad(target(logits).sum(), features)
    weights = grads.float().mean(dim=(2, 3))  # (B, K)
    features = features.detach()
    if _default_relu(model, layer, relu_features):
        # DenseNet's last block: weigh the map the head pools, as `cam` does. The weights still
        # come from the pre-ReLU map (the model's own ReLU masks them), so unlike ResNet the
        # two methods need not agree there.
        features = features.relu()
    maps = _weighted_maps(features, weights, tuple(x.shape[-2:]))
    return maps, torch.sigmoid(logits[:, 0].detach().float())


# --- drawing --------------------------------------------------------------------------


def overlay(
    image: np.ndarray | Tensor,
    cam_map: np.ndarray | Tensor,
    boxes: Boxes | str = (),
    title: str | None = None,
    ax: Axes | None = None,
    cmap: str = "jet",
    alpha: float = 0.4,
) -> Figure:
    """The radiograph (H, W) in grey, the map (h, w) in [0, 1] on top (resized to the image
    when the sizes differ), the expert boxes [x, y, w, h] (image pixels) as green rectangles.
    Draws into `ax` if given, else a new pyplot-free Figure (nothing leaks between calls)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image)
    if isinstance(cam_map, Tensor):
        heat = cam_map.detach().float().cpu()
    else:
        heat = torch.as_tensor(np.asarray(cam_map, dtype=np.float32))
    if image.ndim != 2 or heat.ndim != 2:
        raise ValueError(f"overlay: expected 2-D image and map, got {image.shape}, {heat.shape}")
    if tuple(heat.shape) != image.shape:
        heat = F.interpolate(heat[None, None], size=image.shape, mode="bilinear")[0, 0]
    if ax is None:
        fig = Figure(figsize=(4, 4))
        ax = fig.add_subplot()
    ax.imshow(image, cmap="gray")
    ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    for x, y, w, h in parse_boxes(boxes):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.5))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def overlay_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    maps: Tensor | np.ndarray,
    boxes: Sequence[Boxes | str],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    **kwargs: Any,
) -> Figure:
    """Overlays of N images in one figure, `ncols` per row (for notebooks and reports)."""
    from matplotlib.figure import Figure

    maps = as_numpy(maps)
    n = len(maps)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(3 * ncols, 3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        overlay(images[i], maps[i], boxes[i], titles[i] if titles else None, ax=ax, **kwargs)
    return fig


def save_overlays(
    out_dir: str | Path,
    names: Sequence[str],
    images: Sequence[np.ndarray] | np.ndarray,
    maps: Tensor | np.ndarray,
    boxes: Sequence[Boxes | str],
    probs: Sequence[float] | np.ndarray | Tensor | None = None,
    dpi: int = 100,
    **kwargs: Any,
) -> list[Path]:
    """One PNG per image, `out_dir/<name>.png`, titled with the name and probability.
    Each file is written under a temporary name and renamed, so none is ever half-written."""
    maps = as_numpy(maps)
    if not (len(names) == len(images) == len(maps) == len(boxes)):
        raise ValueError(
            f"save_overlays: names/images/maps/boxes lengths differ: "
            f"{len(names)}, {len(images)}, {len(maps)}, {len(boxes)}"
        )
    if isinstance(probs, Tensor):
        probs = probs.detach().cpu().numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        title = str(name) if probs is None else f"{name}  p={float(probs[i]):.2f}"
        fig = overlay(images[i], maps[i], boxes[i], title=title, **kwargs)
        path = out_dir / f"{name}.png"
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    return paths


# --- a whole run: maps over a split, scores, overlays -------------------------------------

POSITIVE_THRESHOLD = 0.5  # a prediction is positive at prob >= this (see `cam_run`)
METHODS = ("cam", "gradcam")


def _method(method: str) -> str:
    name = method.lower().replace("_", "").replace("-", "")
    if name not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return name


def _run_layer(model: nn.Module, layer: str | None) -> str | None:
    """Accept torchvision names ("layer3") for a pneumolib model, whose net is `model.net`."""
    if layer is None or not hasattr(model, "net"):
        return layer
    try:
        model.get_submodule(layer)
    except AttributeError:
        return "net." + layer
    return layer


def load_run(
    run: str | Path,
    device: str = "cpu",
    cache: str | Path | None = None,
    checkpoint: str = "best.pt",
) -> tuple[nn.Module, Any, dict]:
    """RUN/best.pt (or RUN/`checkpoint`) -> (model in eval mode on `device`, its Config, its
    pixel stats). `cache` overrides the cache folder recorded in the run (a moved run)."""
    from pneumolib.config import Config
    from pneumolib.models import load_checkpoint_model

    path = Path(run) / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; train the run first")
    model, config, stats = load_checkpoint_model(path, map_location=resolve_device(device))
    cfg = Config.from_dict(config)
    if cache is not None:
        cfg = cfg.replace(cache=str(cache))
    return model, cfg, stats


def iter_cam_batches(
    model: nn.Module,
    cache: str | Path,
    index: pd.DataFrame,
    *,
    image_size: int,
    stats: dict,
    gpu_augment: bool = True,
    method: str = "cam",
    layer: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    desc: str = "cam",
):
    """Maps for the `index` rows of `cache`, one forward pass per batch, inputs made exactly as
    for validation (plain resize to `image_size`, normalised with the checkpoint's `stats`, the
    warp where the run's validation did it: `runtime.warp_on_device` with its `gpu_augment`).

    Yields dicts: `rows` (the batch's slice of `index`), `images` uint8 (B, S, S) (the network
    input, de-normalised, for drawing), `maps` float32 (B, S, S) in [0, 1], `probs` (B,).
    """
    from pneumolib.augment import AugmentPolicy
    from pneumolib.loader import make_loader

    method = _method(method)
    layer = _run_layer(model, layer)
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
    mean, std = float(stats["mean"]), float(stats["std"])
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
            maps, probs = cam(model, x, layer=layer)
        else:
            maps, probs = grad_cam(model, x, layer=layer)
        images = ((x[:, 0].float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        yield {
            "rows": index.iloc[batch["position"].numpy()],
            "images": images.cpu().numpy(),
            "maps": maps.cpu().numpy(),
            "probs": probs.cpu().numpy(),
        }


def _box_factor(cfg: Any, cache_size: int) -> float:
    return cfg.image_size / cache_size  # eval inputs are the whole cache image, resized


def cam_examples(
    run: str | Path,
    patient_ids: Sequence[str],
    method: str = "cam",
    layer: str | None = None,
    device: str = "cpu",
    cache: str | Path | None = None,
    checkpoint: str = "best.pt",
) -> dict[str, Any]:
    """Maps for a few patients of a run's cache (for notebooks): dict with `patientId`,
    `images` uint8 (N, S, S), `maps` (N, S, S) in [0, 1], `probs` (N,), `targets` (N,) and
    `boxes` (N lists of [x, y, w, h] in input pixels), in the order of `patient_ids`."""
    from pneumolib.data import read_index, read_stats

    if len(patient_ids) == 0:
        raise ValueError("patient_ids: empty; pass at least one patient")
    model, cfg, stats = load_run(run, device, cache, checkpoint)
    index = read_index(cfg.cache).set_index("patientId", drop=False)
    missing = [p for p in patient_ids if p not in index.index]
    if missing:
        raise ValueError(f"patient_ids: not in {cfg.cache}/index.csv: {missing[:3]}")
    rows = index.loc[list(patient_ids)]
    parts = list(
        iter_cam_batches(
            model,
            cfg.cache,
            rows,
            image_size=cfg.image_size,
            stats=stats,
            gpu_augment=cfg.gpu_augment,
            method=method,
            layer=layer,
            batch_size=max(1, len(rows)),
        )
    )
    factor = _box_factor(cfg, int(read_stats(cfg.cache)["size"]))
    return {
        "patientId": list(patient_ids),
        "images": np.concatenate([p["images"] for p in parts]),
        "maps": np.concatenate([p["maps"] for p in parts]),
        "probs": np.concatenate([p["probs"] for p in parts]),
        "targets": rows["target"].to_numpy(),
        "boxes": [scale_boxes(b, factor) for b in rows["boxes"]],
    }


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def cam_run(
    run: str | Path,
    split: str = "val",
    n_overlays: int = 16,
    method: str = "cam",
    batch_size: int = 64,
    seed: int = 0,
    layer: str | None = None,
    threshold: float = POSITIVE_THRESHOLD,
    n_errors: int = 4,
    n_boot: int = 1000,
    tolerance: float = 0.0,
    device: str = "auto",
    cache: str | Path | None = None,
    tag: str = "",
    checkpoint: str = "best.pt",
    progress: bool = True,
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
    Returns the summary and prints it in one line.
    """
    from pneumolib.data import read_index, read_stats

    method = _method(method)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split: expected train, val or test, got {split!r}")
    run = Path(run)
    stem = f"cam_{split}_{tag}" if tag else f"cam_{split}"
    model, cfg, stats = load_run(run, device, cache, checkpoint)
    layer = _run_layer(model, layer)
    cache_size = int(read_stats(cfg.cache)["size"])
    if "size" in stats and int(stats["size"]) != cache_size:
        raise ValueError(
            f"{cfg.cache}: cache of {cache_size} px, but the run was trained on a "
            f"{stats['size']} px cache; pass the run's cache"
        )
    index = read_index(cfg.cache)
    index = index[index["split"] == split].reset_index(drop=True)
    if index.empty:
        raise ValueError(f"split={split!r}: no rows in {cfg.cache}/index.csv")
    factor = _box_factor(cfg, cache_size)

    frames: list[pd.DataFrame] = []
    kept: dict[str, list] = {"tp": [], "fn": [], "fp": []}  # (pid, image, map, boxes, prob)
    limits = {"tp": n_overlays, "fn": n_errors, "fp": n_errors}
    counts = {"tp": 0, "fn": 0, "fp": 0, "tp_no_box": 0}
    batches = iter_cam_batches(
        model,
        cfg.cache,
        index,
        image_size=cfg.image_size,
        stats=stats,
        gpu_augment=cfg.gpu_augment,
        method=method,
        layer=layer,
        batch_size=batch_size,
        workers=cfg.workers,
        progress=progress,
        desc=f"{method} {split}",
    )
    for b in batches:
        rows, probs = b["rows"], b["probs"]
        target = rows["target"].to_numpy() == 1
        boxes = [scale_boxes(x, factor) for x in rows["boxes"]]
        has_box = np.array([len(x) > 0 for x in boxes], dtype=bool)
        said = probs >= threshold
        kinds = {"tp": target & said, "fn": target & ~said, "fp": ~target & said}
        counts["tp_no_box"] += int((kinds["tp"] & ~has_box).sum())
        tp = kinds["tp"] & has_box  # a positive without a box cannot be scored
        counts["tp"] += int(tp.sum())
        counts["fn"] += int(kinds["fn"].sum())
        counts["fp"] += int(kinds["fp"].sum())
        if tp.any():
            ids = rows["patientId"].to_numpy()[tp].tolist()
            frames.append(
                localisation_scores(
                    ids, b["maps"][tp], [boxes[i] for i in np.flatnonzero(tp)], tolerance
                )
            )
        for kind, mask in {"tp": tp, "fn": kinds["fn"], "fp": kinds["fp"]}.items():
            for i in np.flatnonzero(mask)[: max(0, limits[kind] - len(kept[kind]))]:
                pid = rows["patientId"].iloc[i]
                kept[kind].append(
                    (f"{kind}_{pid}", b["images"][i], b["maps"][i], boxes[i], probs[i])
                )

    columns = ["patientId", "pointing_hit", "energy_in_box", "box_area_fraction"]
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    summary: dict[str, Any] = {
        "split": split,
        "method": method,
        "layer": layer or _default_layer(_unwrap(model), None),
        "threshold": threshold,
        "tolerance": tolerance,
        "n_images": len(index),
        "n_true_positives": counts["tp"],
        "n_false_negatives": counts["fn"],
        "n_false_positives": counts["fp"],
        "n_true_positives_without_box": counts["tp_no_box"],
        "image_size": cfg.image_size,
        "checkpoint": checkpoint,
        **summarize_localisation(scores, n_boot=n_boot, seed=seed),
    }
    _write_atomic(run / f"{stem}.csv", lambda p: scores.to_csv(p, index=False))
    # NaN (no true positives) is not JSON: written as null.
    plain = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in summary.items()}
    text = json.dumps(plain, indent=2)
    _write_atomic(run / f"{stem}.json", lambda p: p.write_text(text))
    _write_overlay_folder(run / "figures" / stem, kept)
    print(format_localisation(summary))
    return summary


def _write_overlay_folder(out: Path, kept: dict[str, list]) -> None:
    """Replace `out` with the overlays in `kept`; built beside it, then renamed into place."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for items in kept.values():
        if items:
            names, images, maps, boxes, probs = zip(*items, strict=True)
            save_overlays(tmp, names, images, np.stack(maps), boxes, np.asarray(probs))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
