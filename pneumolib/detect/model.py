"""The box detector: a torchvision detection model on a 1-channel ResNet-FPN backbone.

`build_detector` returns a `torchvision.models.detection` model (FCOS by default; RetinaNet and
Faster R-CNN are built the same way for comparison) whose input is a batch of grey images in
[0, 1], `(B, 1, S, S)` with S the run's image size. Its transform neither resizes (min_size =
max_size = S) nor normalises differently from the classifier: it subtracts the cache's mean and
divides by its std, one channel. In train mode `model(x, targets)` returns a dict of losses; in
eval mode `model(x)` returns per image `boxes` (k, 4) [x1, y1, x2, y2] in input pixels,
`scores` (k,) and `labels` (k,).

Starting weights for the ResNet body: "none" (random), "imagenet" (torchvision's download, as
the classifier gets them), or a file: a classifier run's checkpoint (its `net.*` ResNet weights),
a run folder (its best.pt) or a torchvision ResNet state dict. All go through the classifier's
own loader (`core.models.build_model`), which sums a 3-channel stem to one channel.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torchvision.models import get_model
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from pneumolib.base.config import Config
from pneumolib.base.errors import UsageError
from pneumolib.base.rundir import BEST
from pneumolib.core.checkpoint import load_checkpoint
from pneumolib.core.models import MODES, NAMED_WEIGHTS, build_model
from pneumolib.data.cache_stats import CacheStats

# The detector pneumolib trains. FCOS is anchor-free, so nothing is fitted to the image size
# (RetinaNet's and Faster R-CNN's anchors are scaled by `_anchors`); on one CPU thread at
# 128 px its training step costs what RetinaNet's does, and Faster R-CNN's (its RoI head over
# 512 sampled proposals an image) about 7 times as much.
ARCHITECTURE = "fcos"
ARCHITECTURES = ("fcos", "retinanet", "fasterrcnn")  # what `build_detector` can build
BACKBONES = ("resnet18", "resnet34", "resnet50")  # Config.model values a detector accepts
MAX_BOXES = 4  # boxes kept per image: an RSNA patient has one to four
MIN_SCORE = 0.05  # boxes below this confidence are never returned (val picks the real cut)


def box_label(arch: str = ARCHITECTURE) -> int:
    """The class index of an opacity box: 1 where index 0 is the background (Faster R-CNN),
    else 0 (one foreground class: FCOS, RetinaNet)."""
    return 1 if arch == "fasterrcnn" else 0


def _body_state(name: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The ResNet body's starting weights (torchvision keys, 1-channel conv1), or None for
    random init. A run folder means its best.pt; every other value goes through the classifier's
    own loader (ImageNet download with its one-line error offline, pneumolib checkpoints, state
    dicts), whose network's state, less its head, is the body's."""
    if weights == "none":
        return None
    path = Path(weights)
    if weights not in NAMED_WEIGHTS and path.is_dir():
        if not (path / BEST).is_file():
            raise FileNotFoundError(f"{path / BEST}: no checkpoint to take a backbone from")
        weights = str(path / BEST)
    net = cast(nn.Module, build_model(name, "finetune", weights).net)  # a Classifier's
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def _resnet(name: str, weights: str, *, frozen: bool) -> nn.Module:
    """A torchvision ResNet with a 1-channel conv1 and the starting weights of `weights`;
    `frozen`: FrozenBatchNorm2d (the statistics and affine of the start stay as they are)."""
    norm: Callable[..., nn.Module] = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    net = get_model(name, weights=None, norm_layer=norm)
    old = net.conv1
    net.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    state = _body_state(name, weights)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        wrong = [k for k in [*missing, *unexpected] if not k.startswith("fc.")]
        if wrong:
            raise UsageError(f"weights {weights} do not fit a {name} backbone, e.g. {wrong[0]!r}")
    return net


def _anchors(image_size: int, n_levels: int, ratios: tuple[float, ...]) -> AnchorGenerator:
    """Anchors scaled to the image: torchvision's 32-512 px (for ~800 px COCO images) times
    image_size / 512, so an RSNA box (a tenth to a half of the film) meets anchors its size."""
    base = [max(4.0, s * image_size / 512) for s in (32, 64, 128, 256, 512)][:n_levels]
    sizes = tuple(tuple(b * 2 ** (i / 3) for i in range(3)) for b in base)  # 3 per octave
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def _backbone(resnet: nn.Module, arch: str, *, frozen: bool) -> BackboneWithFPN:
    """ResNet -> FPN: P3-P7 (P6, P7 from P5) for the one-stage models, P2-P6 for Faster R-CNN.
    `frozen`: the body does not train (only the FPN and the heads do)."""
    trainable = 0 if frozen else 5
    if arch == "fasterrcnn":
        return _resnet_fpn_extractor(resnet, trainable)  # type: ignore[arg-type]
    return _resnet_fpn_extractor(
        resnet,  # type: ignore[arg-type]
        trainable,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )


def build_detector(
    name: str = "resnet18",
    mode: str = "finetune",
    weights: str = "none",
    *,
    image_size: int,
    mean: float,
    std: float,
    arch: str = ARCHITECTURE,
) -> nn.Module:
    """A torchvision detector (`arch`) on a 1-channel `name` ResNet-FPN for grey images in
    [0, 1], (B, 1, image_size, image_size), normalised inside by `mean`, `std` (the cache's).

    `mode`: finetune (everything trains), feature-extraction (the ResNet body is frozen, its
    BatchNorm included; the FPN and heads train) or scratch (random init; `weights` ignored).
    """
    if name not in BACKBONES:
        raise UsageError(f"a detector's backbone is a ResNet: choose one of {', '.join(BACKBONES)}")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown detector {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if mode == "scratch":
        if weights not in NAMED_WEIGHTS:
            warnings.warn(f"mode 'scratch' ignores weights {weights}", stacklevel=2)
        weights = "none"
    frozen = mode == "feature-extraction"
    backbone = _backbone(_resnet(name, weights, frozen=frozen), arch, frozen=frozen)
    common: dict[str, Any] = {
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": [mean],
        "image_std": [std],
    }
    if arch == "fcos":
        return FCOS(
            backbone,
            num_classes=1,
            score_thresh=MIN_SCORE,
            detections_per_img=MAX_BOXES,
            **common,
        )
    if arch == "retinanet":
        return RetinaNet(
            backbone,
            num_classes=1,
            anchor_generator=_anchors(image_size, 5, (0.5, 1.0, 2.0)),
            score_thresh=MIN_SCORE,
            detections_per_img=MAX_BOXES,
            **common,
        )
    return FasterRCNN(
        backbone,
        num_classes=2,
        rpn_anchor_generator=_anchors(image_size, 5, (0.5, 1.0, 2.0)),
        box_score_thresh=MIN_SCORE,
        box_detections_per_img=MAX_BOXES,
        **common,
    )


def detector_for(cfg: Config, stats: CacheStats, *, weights: str | None = None) -> nn.Module:
    """The detector a run's `cfg` trains, on a cache with `stats`; `weights` overrides
    `cfg.weights` (a resumed or loaded run takes its own from its checkpoint)."""
    return build_detector(
        cfg.model,
        cfg.mode,
        cfg.weights if weights is None else weights,
        image_size=cfg.image_size,
        mean=stats.mean,
        std=stats.std,
    )


def load_detector(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, CacheStats]:
    """A detector run's checkpoint -> (model in eval mode, its Config, its cache's stats)."""
    model, cfg, stats, _ = load_detector_checkpoint(path, map_location)
    return model, cfg, stats


def load_detector_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, CacheStats, dict[str, Any]]:
    """`load_detector`'s three and the checkpoint's metrics.csv row (its epoch's val columns,
    among them `val_box_threshold`, the confidence cut chosen on val)."""
    ckpt = load_checkpoint(Path(path), map_location=map_location)  # one line if damaged
    if not {"config", "stats"} <= ckpt.keys():
        raise UsageError(f"{path} is not a pneumolib checkpoint (no 'config', 'stats')")
    cfg, stats = Config.from_dict(dict(ckpt["config"])), CacheStats.from_dict(ckpt["stats"])
    if cfg.kind != "detector":
        raise UsageError(f"{path} holds a {cfg.kind}, not a detector")
    model = detector_for(cfg, stats, weights="none")
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), cfg, stats, dict(ckpt.get("metrics") or {})
