"""The search plan of a sweep: its points, each point's Config, and how large a micro-batch fits.

A point is a parameter dict (`{"batch_size": 64, "lr": 1e-4}`); its run folder is named after it
(`run_name`). `make_plan` is what every worker of one study must agree on.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pneumolib.base.config import EXACT, MACHINE, PATH, STRENGTH, Config, field_names
from pneumolib.core import runtime
from pneumolib.core.models import build_model, trainable_parameters
from pneumolib.core.tasks import task_spec
from pneumolib.train.setup import make_optimizer

ORIGINAL_BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024)
ORIGINAL_LRS = (1e-4, 2e-4)
CPU_MAX_MICRO = 64  # micro-batch cap on a CPU (memory is rarely the limit there, time is)
SAMPLERS = ("grid", "random", "tpe")
LR_RULES = ("none", "linear", "sqrt")
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)  # random/TPE search ranges (log-uniform)
AUG_STRENGTH_RANGE = (0.0, 2.0)  # 0 = no augmentation, 1 = the config's policy, 2 = twice as wide
# Config fields that may differ between the workers of one study: where and how fast, not what
# (declared by the tags in pneumolib.base.config); the augmentation ranges an aug strength scales.
LOCAL_FIELDS = frozenset(field_names(PATH, EXACT, MACHINE))
AUG_FIELDS = list(field_names(STRENGTH))


# --- points, run folders and configs -----------------------------------------------------


def pick_micro_batch(batch_size: int, max_micro: int) -> int:
    """The largest divisor of `batch_size` that is at most `max_micro` (at least 1)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    cap = max(1, min(batch_size, max_micro))
    return next(d for d in range(cap, 0, -1) if batch_size % d == 0)


def scaled_lr(
    base_lr: float, batch_size: int, rule: str = "none", ref_batch_size: int = 64
) -> float:
    """Learning rate for `batch_size` by a scaling rule: none, linear or sqrt in bs / ref."""
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * batch_size / ref_batch_size
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / ref_batch_size)
    raise ValueError(f"lr scaling: expected one of {LR_RULES}, got {rule!r}")


def with_aug_strength(cfg: Config, s: float) -> Config:
    """Scale every augmentation range of `cfg` by `s` (0 = none, 1 = as is, 2 = twice as wide)."""
    return cfg.replace(
        rotate_deg=cfg.rotate_deg * s,
        translate=cfg.translate * s,
        scale_min=max(0.1, 1 - (1 - cfg.scale_min) * s),
        scale_max=1 + (cfg.scale_max - 1) * s,
        crop_scale_min=min(1.0, max(0.05, 1 - (1 - cfg.crop_scale_min) * s)),
        crop_ratio_min=math.exp(math.log(cfg.crop_ratio_min) * s),
        crop_ratio_max=math.exp(math.log(cfg.crop_ratio_max) * s),
        brightness=cfg.brightness * s,
        contrast=cfg.contrast * s,
    )


def run_name(params: Mapping[str, Any]) -> str:
    """The run-folder name of a point, e.g. `bs64_lr0.0001`: a function of the point only."""
    parts = [f"bs{int(params['batch_size'])}"]
    tags = (("lr", "lr"), ("base_lr", "blr"), ("weight_decay", "wd"), ("aug_strength", "aug"))
    parts += [f"{tag}{float(params[k]):g}" for k, tag in tags if k in params]
    return "_".join(parts)


def trial_config(
    base: Config,
    params: Mapping[str, Any],
    *,
    micro: int,
    out: str | Path,
    lr_scaling: str = "none",
    ref_batch_size: int = 64,
) -> Config:
    """The Config of one point: `base` with the point's batch size, lr (scaled from `base_lr`
    when the point has one), weight decay and augmentation strength, micro-batch and folder."""
    bs = int(params["batch_size"])
    lr = (
        params["lr"]
        if "lr" in params
        else scaled_lr(params["base_lr"], bs, lr_scaling, ref_batch_size)
    )
    cfg = base.replace(batch_size=bs, lr=float(lr), micro_batch_size=int(micro), out=str(out))
    if "weight_decay" in params:
        cfg = cfg.replace(weight_decay=float(params["weight_decay"]))
    if "aug_strength" in params:
        cfg = with_aug_strength(cfg, float(params["aug_strength"]))
    return cfg


def search_space(
    sampler: str, batch_sizes: Sequence[int], lrs: Sequence[float], lr_name: str = "lr"
) -> dict[str, list]:
    """Grid: the values of each axis. Random/TPE: batch sizes, and [low, high] ranges for the
    learning rate (min..max of `lrs`, or x/10..10x for a single value), weight decay and
    augmentation strength."""
    bs = [int(b) for b in batch_sizes]
    lrs = [float(x) for x in lrs]
    if not bs or not lrs or min(bs) < 1 or min(lrs) <= 0:
        raise ValueError(f"need positive batch sizes and learning rates, got {bs} and {lrs}")
    if sampler == "grid":
        return {"batch_size": bs, lr_name: lrs}
    lo, hi = (min(lrs), max(lrs)) if min(lrs) < max(lrs) else (lrs[0] / 10, lrs[0] * 10)
    return {
        "batch_size": sorted(set(bs)),
        lr_name: [lo, hi],
        "weight_decay": list(WEIGHT_DECAY_RANGE),
        "aug_strength": list(AUG_STRENGTH_RANGE),
    }


def grid_points(space: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as parameter dicts."""
    names = list(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*space.values())]


# --- what the workers of one study agree on -----------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What every worker of one study agrees on; stored in the study as `to_dict()`."""

    sampler: str  # "grid", "random" or "tpe"
    space: dict[str, list]  # grid: each axis's values; random/TPE: batch sizes, [low, high] ranges
    lr_scaling: str  # "none", "linear" or "sqrt": the lr axis is a base lr at ref_batch_size
    config: dict[str, Any]  # the Config's fixed fields (less LOCAL_FIELDS and the swept ones)
    ref_batch_size: int | None  # the batch size a base lr is for; None without lr scaling

    def to_dict(self) -> dict[str, Any]:
        """The plan as the study stores it (JSON: lists, not tuples), keys in the stored order."""
        d = {
            "sampler": self.sampler,
            "space": self.space,
            "lr_scaling": self.lr_scaling,
            "config": self.config,
            "ref_batch_size": self.ref_batch_size,
        }
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """A plan as a study stored it."""
        return cls(
            sampler=d["sampler"],
            space=dict(d["space"]),
            lr_scaling=d["lr_scaling"],
            config=dict(d["config"]),
            ref_batch_size=d.get("ref_batch_size"),
        )


def make_plan(
    cfg: Config, sampler: str, *, space: dict, lr_scaling: str, ref_batch_size: int
) -> Plan:
    """What every worker of a study must agree on: the points and the fixed settings (the
    Config less the fields that may differ between workers and those the sweep varies)."""
    swept = {"batch_size", "lr"} | (set() if sampler == "grid" else {"weight_decay", *AUG_FIELDS})
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_FIELDS | swept}
    plan = Plan(
        sampler=sampler,
        space=space,
        lr_scaling=lr_scaling,
        config=fixed,
        ref_batch_size=ref_batch_size if lr_scaling != "none" else None,
    )
    return Plan.from_dict(plan.to_dict())  # as the storage gives it back: lists, not tuples


def plan_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
    """{setting: (old value, new value)} for every setting on which two stored plans differ."""
    diff = {k: (old.get(k), new.get(k)) for k in new if k != "config" and old.get(k) != new[k]}
    a, b = old.get("config", {}), new["config"]
    diff.update({k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
    return diff


# --- GPU memory ----------------------------------------------------------------------------


def auto_max_micro_batch(cfg: Config, fraction: float = 0.6) -> int:
    """The largest power-of-two micro-batch that fits the device, for `cfg.model` at
    `cfg.image_size`: measured by two short forward/backward passes (8 and 16 images) on a
    CUDA GPU (`fraction` of the free memory); `CPU_MAX_MICRO` on a CPU."""
    device = runtime.resolve_device(cfg.device)
    if device.type != "cuda":
        return CPU_MAX_MICRO
    try:
        per_image, free = probe_cuda(cfg, device)
    except RuntimeError as e:  # a probe that fails must not stop the sweep
        print(f"micro-batch probe failed ({str(e).splitlines()[0]}); using 32")
        return 32
    finally:
        torch.cuda.empty_cache()  # the probe's model is gone: give its memory back
    n = max(1, int(free * fraction / per_image))
    return int(min(1024, 2 ** int(math.log2(n))))


def probe_cuda(cfg: Config, device: torch.device) -> tuple[float, int]:
    """(bytes per image of one training step of `cfg`, free bytes with the model loaded)."""
    width = task_spec(cfg.task).n_outputs
    model = build_model(cfg.model, cfg.mode, "none", n_outputs=width).to(device)
    channels_last = cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(trainable_parameters(model), cfg)
    dtype = runtime.amp_dtype(device, cfg.amp)

    def peak(b: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        x = torch.randn(b, 1, cfg.image_size, cfg.image_size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del x, loss
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start

    peak(8)  # warm-up: optimiser state and cuDNN workspaces exist from here on
    per_image = max((peak(16) - peak(8)) / 8, 1.0)
    return per_image, torch.cuda.mem_get_info(device)[0]
