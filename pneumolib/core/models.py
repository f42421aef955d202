"""Torchvision backbones with a 1-channel input and one logit per class of the task.

`build_model(name, mode, weights)` returns a `Classifier`: a thin wrapper whose `net` is the
torchvision model, so state-dict keys are always `net.<torchvision key>` in every mode.

- input `(B, 1, H, W)` float, output `(B, 1)` logits (`(B, 3)` for the three-class task);
- the first convolution takes one channel; pretrained RGB kernels are SUMMED over their three
  input channels (a grey image repeated as RGB gives the same response as before);
- the ImageNet classifier is replaced by a fresh `nn.Linear(in_features, K)`;
- modes: `finetune` (everything trains), `feature-extraction` (backbone frozen, its BatchNorm
  statistics included: `model.train()` keeps it in eval mode; only the classifier trains) and
  `scratch` (random init, everything trains; any `weights` argument is ignored, and a weights
  file given with it gets a warning).
"""

from __future__ import annotations

import re
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from pneumolib.base.config import Config
from pneumolib.base.errors import UsageError
from pneumolib.core import tasks
from pneumolib.data.cache_stats import CacheStats

MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0")
MODES = ("finetune", "feature-extraction", "scratch")
NAMED_WEIGHTS = ("imagenet", "none")  # besides a path to a state-dict file
_HINT = "pass a local weights file with --weights FILE (build_model(..., weights='FILE.pth'))"


@dataclass(frozen=True)
class _Family:
    stem: str  # first convolution (gets the 1-channel input)
    classifier: str  # block that trains in feature-extraction mode (Linear, or Dropout + Linear)
    head: str  # the final Linear layer, replaced by a 1-logit one
    features: str  # last convolutional feature map, the input of global pooling (for CAM)


# Dotted names inside the torchvision model, per architecture family.
# DenseNet applies F.relu to `features` before pooling, so CAM on it must apply relu itself.
_FAMILIES: dict[str, _Family] = {
    "resnet": _Family(stem="conv1", classifier="fc", head="fc", features="layer4"),
    "densenet": _Family(
        stem="features.conv0", classifier="classifier", head="classifier", features="features"
    ),
    "efficientnet": _Family(
        stem="features.0.0", classifier="classifier", head="classifier.1", features="features"
    ),
}

# Old DenseNet checkpoints (including torchvision's own download) name `norm1` as `norm.1`.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _family_name(name: str) -> str:
    return next(f for f in _FAMILIES if name.startswith(f))


class Classifier(nn.Module):
    """Wraps a torchvision model `net`; `(B, 1, H, W)` -> `(B, K)` logits (K: `tasks.n_outputs`).

    With `frozen=True` (feature extraction) `train()` keeps `net` in eval mode, so BatchNorm
    running statistics stay the pretrained ones and stochastic depth stays off; only the
    classifier block follows the requested mode.
    """

    def __init__(self, net: nn.Module, name: str, frozen: bool = False) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.family = _family_name(name)
        self.frozen = frozen
        self.train()  # apply the frozen/unfrozen split from the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.net.eval()
            self.net.get_submodule(_FAMILIES[self.family].classifier).train(mode)
        return self


def _unwrap(model: nn.Module) -> Classifier:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    if not isinstance(model, Classifier):
        raise TypeError(f"expected a model from core.models.build_model, got {type(model)}")
    return model


def _replace(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def head(model: nn.Module) -> nn.Linear:
    """The final `nn.Linear` layer (one output per logit)."""
    m = _unwrap(model)
    return cast(nn.Linear, m.net.get_submodule(_FAMILIES[m.family].head))  # by _FAMILIES


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the head's input on every forward inside the block: a list that gains one
    float32 CPU tensor (B, D) per call (D: 512 for resnet18), in call order. The features the
    out-of-distribution check models (`evaluate.ood`)."""
    found: list[torch.Tensor] = []

    def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        found.append(inputs[0].detach().float().flatten(1).cpu())

    handle = head(model).register_forward_pre_hook(keep)
    try:
        yield found
    finally:
        handle.remove()


def feature_layer_name(model: nn.Module) -> str:
    """Dotted name (for `model.get_submodule`) of the last conv feature map, `(B, C, h, w)`.

    resnet: `net.layer4`; densenet: `net.features` (the model applies relu after it: CAM must
    too); efficientnet: `net.features`.
    """
    m = _unwrap(model)
    return "net." + _FAMILIES[m.family].features


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with `requires_grad` (all of them, or only the head in feature extraction)."""
    return [p for p in model.parameters() if p.requires_grad]


def build_model(
    name: str = "resnet18",
    mode: str = "finetune",
    weights: str = "imagenet",
    *,
    n_outputs: int = 1,
) -> nn.Module:
    """A `Classifier` taking `(B, 1, H, W)` float images to `(B, n_outputs)` logits
    (1 for the binary task, 3 for three-class: `pneumolib.core.tasks.n_outputs`).

    `weights`: "imagenet" (torchvision's default weights, downloaded to the torch hub cache),
    "none" (random init) or a path to a state dict: a torchvision RGB one (first conv summed
    to 1 channel, ImageNet head dropped), a pneumolib one (loaded strictly) or a pneumolib
    checkpoint (its "model" entry); a head of another width (ImageNet's 1,000 classes, a
    binary run's one logit for a three-class model) is left freshly initialised.
    `mode="scratch"` ignores `weights`.
    """
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "scratch":
        if weights not in NAMED_WEIGHTS:
            warnings.warn(f"mode 'scratch' ignores weights file {weights}", stacklevel=2)
        weights = "none"

    fam = _FAMILIES[_family_name(name)]
    net = get_model(name, weights=None)
    stem = net.get_submodule(fam.stem)
    one = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
    # Summing also for random init keeps one code path; the BatchNorm after every stem makes
    # the kernels' scale irrelevant.
    with torch.no_grad():
        one.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
    _replace(net, fam.stem, one)
    old_head = net.get_submodule(fam.head)
    _replace(net, fam.head, nn.Linear(old_head.in_features, n_outputs))

    model = Classifier(net, name, frozen=mode == "feature-extraction")
    if weights == "imagenet":
        what = f"ImageNet weights do not fit {name}"
        _load_torchvision_state(model, _imagenet_state_dict(name), what)
    elif weights != "none":
        _load_file(model, weights)
    if model.frozen:
        for p in model.net.parameters():
            p.requires_grad = False
        for p in head(model).parameters():
            p.requires_grad = True
    return model


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet state dict for `name`, from the hub cache or the web."""
    w = get_model_weights(name).DEFAULT
    cached = (
        Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(w.url).path).name
    )
    try:
        return w.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, HTTPException) as e:  # URLError, timeouts and resets are all OSErrors
        reason = (str(e).splitlines() or [""])[0]  # keep the message on one line
        raise FileNotFoundError(
            f"ImageNet weights for {name} missing: {cached} is not cached and downloading "
            f"{w.url} failed ({type(e).__name__}: {reason}); put the file there, or {_HINT}"
        ) from None


def _strip(state: dict[str, Any]) -> dict[str, Any]:
    """Drop prefixes added by torch.compile (`_orig_mod.`) and DataParallel/DDP (`module.`)."""
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _load_state(
    module: nn.Module, state: dict[str, Any], what: str, may_miss: tuple[str, ...] = ()
) -> None:
    """`load_state_dict` with a one-line ValueError naming `what` on any mismatch."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        detail = next(ln.strip() for ln in str(e).splitlines()[1:] if ln.strip())
        raise UsageError(f"{what}: {detail}") from None
    wrong = [k for k in missing if k not in may_miss] + list(unexpected)
    if wrong:
        raise UsageError(f"{what}: {len(wrong)} keys missing or unexpected, e.g. {wrong[0]!r}")


def _torch_load(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UsageError(f"cannot read {what} {path} with torch.load: {type(e).__name__}") from None


def _load_file(model: Classifier, path: str | Path) -> None:
    """Load a weights file: a pneumolib state dict or checkpoint, or a torchvision state dict."""
    state = _torch_load(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a pneumolib checkpoint
    if not isinstance(state, dict) or not state:
        raise UsageError(f"weights file {path} does not hold a state dict")
    state = _strip(state)
    what = f"weights file {path} does not fit {model.name}"
    if all(k.startswith("net.") for k in state):  # saved from a pneumolib Classifier
        state, head_keys = _fitting_head(model, state, prefix="net.")
        _load_state(model, state, what, may_miss=head_keys)
    else:
        _load_torchvision_state(model, state, what)


def _fitting_head(
    model: Classifier, state: dict[str, Any], *, prefix: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`state` without its head when the head's width differs from `model`'s (ImageNet's
    1,000 classes, or one logit loaded into a three-class model), and the head keys that may
    therefore be missing."""
    keys = tuple(f"{prefix}{_FAMILIES[model.family].head}.{p}" for p in ("weight", "bias"))
    width = head(model).out_features
    if state.get(keys[0], torch.empty(0)).shape[:1] != (width,):
        state = {k: v for k, v in state.items() if k not in keys}
    return state, keys


def _load_torchvision_state(model: Classifier, state: dict[str, Any], what: str) -> None:
    """Load a torchvision-keyed state dict: 3-channel stem summed to 1, foreign head dropped."""
    fam = _FAMILIES[model.family]
    state = {_LEGACY_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    stem_key = fam.stem + ".weight"
    if stem_key in state and state[stem_key].ndim == 4 and state[stem_key].shape[1] == 3:
        state[stem_key] = state[stem_key].sum(dim=1, keepdim=True)
    state, head_keys = _fitting_head(model, state, prefix="")
    _load_state(model.net, state, what, may_miss=head_keys)


def load_checkpoint_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, CacheStats]:
    """Rebuild the model saved in a pneumolib checkpoint: `(model in eval mode, its Config,
    stats)`. The Config is read through `Config.from_dict`: fields an older run lacks take
    their defaults (e.g. `task` binary). Use `checkpoint.load_run` for a whole run."""
    ckpt = _torch_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or not {"model", "config", "stats"} <= ckpt.keys():
        raise UsageError(
            f"{path} is not a pneumolib checkpoint (expected keys 'model', 'config', 'stats')"
        )
    config, stats = Config.from_dict(dict(ckpt["config"])), CacheStats.from_dict(ckpt["stats"])
    if config.kind != "classifier":  # one line, not a state-dict mismatch
        raise UsageError(
            f"{path} is a {config.kind} checkpoint (`python -m pneumolib detect`); this command "
            "takes a classifier's (`python -m pneumolib train`)"
        )
    width = tasks.n_outputs(config.task)
    model = build_model(config.model, config.mode, "none", n_outputs=width)
    _load_state(model, _strip(ckpt["model"]), f"checkpoint {path} does not fit {model.name}")
    return model.to(map_location).eval(), config, stats
