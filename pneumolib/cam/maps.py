"""Class activation maps: where in the radiograph the network found its evidence.

Two methods, one shape of answer. Both capture the feature map `A` (B, K, h, w) of one layer
in a single forward pass and return `ReLU(sum_k weight_k * A_k)`, upsampled to the input size
and scaled to [0, 1]; they differ only in how the channel weights are found:

- `cam` (Zhou et al. 2016): exact for global-average-pooling + linear heads (ResNet, DenseNet,
  EfficientNet): the weights are the head's own weights, so `mean(CAM) + bias == logit`.
- `grad_cam` (Selvaraju et al. 2017): any convolutional layer; the weights are the spatial
  means of the target's gradient. On the last layer of a GAP + linear head it equals `cam`.

"What to explain" is a target object (`BinaryLogitTarget`), kept apart from "how". This module
is the maths on a model and a batch; a trained run folder (maps over a split, pointing-game
scores, overlays, files) is `pneumolib.cam.run` (`python -m pneumolib cam --run RUN`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import DenseNet

from pneumolib.base.errors import UsageError
from pneumolib.core.models import feature_layer_name, head
from pneumolib.core.tasks import CLASS_KEYS, TASKS, pneumonia_probability, task_spec

# --- what to explain ----------------------------------------------------------------


class BinaryLogitTarget:
    """The score to explain: the pneumonia logit (the one logit of a binary head, the Lung
    Opacity logit of a three-class head: always the last) when `positive`, else its negative
    (evidence against). Call on logits (B, K) or (B,) -> (B,)."""

    def __init__(self, positive: bool = True) -> None:
        self.positive = positive

    def __call__(self, logits: Tensor) -> Tensor:
        score = logits.reshape(logits.shape[0], -1)[:, -1]
        return score if self.positive else -score

    def __repr__(self) -> str:
        return f"BinaryLogitTarget(positive={self.positive})"


class ClassTarget:
    """The logit of class `k` of a three-class head (`pneumolib.core.tasks.THREE_CLASSES` order:
    0 Normal, 1 No Lung Opacity / Not Normal, 2 Lung Opacity). Logits (B, K) -> (B,)."""

    def __init__(self, k: int) -> None:
        if not 0 <= k < len(CLASS_KEYS):
            raise ValueError(f"class {k}: expected 0, 1 or 2")
        self.k = k

    def __call__(self, logits: Tensor) -> Tensor:
        if logits.ndim != 2 or logits.shape[1] != len(CLASS_KEYS):
            raise UsageError(
                f"target {CLASS_KEYS[self.k]!r} needs a three-class run; this head has "
                f"{logits.shape[-1]} logit(s) (explain 'pneumonia' instead)"
            )
        return logits[:, self.k]

    def __repr__(self) -> str:
        return f"ClassTarget({self.k})"


def class_target(name: str) -> BinaryLogitTarget | ClassTarget:
    """A target by name: "pneumonia" (either task), or a `tasks.CLASS_KEYS` name of a
    three-class head ("normal", "not_normal", "lung_opacity")."""
    if name == "pneumonia":
        return BinaryLogitTarget()
    if name not in CLASS_KEYS:
        raise UsageError(f"unknown target {name!r}: pneumonia or one of {', '.join(CLASS_KEYS)}")
    return ClassTarget(CLASS_KEYS.index(name))


# --- hooks and model plumbing ---------------------------------------------------------


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule of `model` with dotted `name` (e.g. "layer4", "features.denseblock4")."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise UsageError(
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
            raise UsageError(f"layer={self.layer!r}: expected a (B, K, h, w) output, got {shape}")
        if self.requires_grad:
            leaf = output.detach().requires_grad_()
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


def resolve_layer(model: nn.Module, layer: str | None) -> str | None:
    """Accept torchvision names ("layer3") for a pneumolib model, whose net is `model.net`:
    "layer3" -> "net.layer3" when only the latter exists. None (the default layer) stays None."""
    if layer is None or not hasattr(model, "net"):
        return layer
    try:
        model.get_submodule(layer)
    except AttributeError:
        return "net." + layer
    return layer


def default_layer(model: nn.Module) -> str:
    """The dotted name of the layer `cam` and `grad_cam` use when none is given: the one the
    head pools (`pneumolib.core.models.feature_layer_name`), inside any compile/DataParallel
    wrapper."""
    return _default_layer(_unwrap(model), None)


def _default_layer(model: nn.Module, layer: str | None) -> str:
    if layer is not None:
        return layer
    return feature_layer_name(model)


def _default_relu(model: nn.Module, layer: str, relu_features: bool | None) -> bool:
    """DenseNet applies F.relu after `features`; ResNet/EfficientNet maps are post-activation."""
    if relu_features is not None:
        return relu_features
    parent_name, _, last = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return isinstance(parent, DenseNet) and last == "features"


def _forward(model: nn.Module, x: Tensor, layer: str, requires_grad: bool) -> tuple[Tensor, Tensor]:
    """One forward pass in eval mode recording `layer`: (features (B, C, h, w), logits (B, K))."""
    if x.ndim != 4:
        raise ValueError(f"x: expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    grad_mode = torch.enable_grad() if requires_grad else torch.no_grad()
    with (
        _EvalMode(model),
        FeatureHook(model, layer, requires_grad=requires_grad) as hook,
        grad_mode,
    ):
        logits = model(x)
    if not hook.features:
        raise UsageError(f"layer={layer!r}: the layer did not run in the model's forward pass")
    widths = sorted({t.n_outputs for t in map(task_spec, TASKS)})  # one head per task
    if logits.ndim > 2 or logits.reshape(len(x), -1).shape[1] not in widths:
        raise ValueError(
            f"model: expected {' or '.join(map(str, widths))} logits per image, "
            f"got {tuple(logits.shape)}"
        )
    return hook.features[-1], logits.reshape(len(x), -1)


def _weighted_maps(features: Tensor, weights: Tensor, size: tuple[int, ...]) -> Tensor:
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


def cam_weights(linear: nn.Linear, target: BinaryLogitTarget | ClassTarget | None = None) -> Tensor:
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

    x (B, C, H, W) -> (features (B, K, h, w), logits (B, K)). For a GAP + linear head,
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
    *,
    layer: str | None = None,
    linear: nn.Linear | None = None,
    relu_features: bool | None = None,
    target: BinaryLogitTarget | ClassTarget | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact CAM for a global-pooling + linear head, the whole batch in one forward pass.

    x (B, C, H, W) normalised input -> (maps (B, H, W) in [0, 1], probabilities (B,)).
    `layer` is the dotted name of the module whose output the head pools and `linear` the
    final one-logit layer (defaults: `pneumolib.core.models.feature_layer_name` and `head`).
    `relu_features` applies ReLU to the captured map (default: on for DenseNet "features").
    """
    model = _unwrap(model)
    layer = _default_layer(model, layer)
    if linear is None:
        linear = head(model)
    features, logits = feature_maps(model, x, layer, relu_features)
    if features.shape[1] != linear.in_features:
        raise UsageError(
            f"linear: expects {linear.in_features} features, layer={layer!r} has "
            f"{features.shape[1]} channels; pass the layer the head pools"
        )
    weights = cam_weights(linear, target).to(features.device).expand(len(features), -1)
    maps = _weighted_maps(features, weights, tuple(x.shape[-2:]))
    return maps, pneumonia_probability(logits)


def grad_cam(
    model: nn.Module,
    x: Tensor,
    *,
    layer: str | None = None,
    target: BinaryLogitTarget | ClassTarget | None = None,
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
    return maps, pneumonia_probability(logits.detach())
