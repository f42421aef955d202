"""One configuration dataclass for the whole pipeline, with a `demo` and an `rsna` preset.

Override fields with `dataclasses.replace(cfg, lr=2e-4)` or on the command line
(`python -m pneumolib train --lr 2e-4`). The config is stored whole in every run folder
(`config.json`) and checkpoint, so a run can be rebuilt from its folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write

# What a field is, declared once beside it (`_tagged`); the field lists other modules need are
# derived from these tags by `field_names`:
PATH = "path"  # where things are: never changes a result
EXACT = "exact"  # how fast, with the same numbers (device, workers, compile, eval batch)
MACHINE = "machine"  # how fast on this machine, numbers may differ in the last bits
STOPPING = "stopping"  # when to stop early, not how each epoch trains
STRENGTH = "strength"  # an augmentation range scaled by the sweep's augmentation strength

# What `workers` means, in every command (the loader's workers in train/evaluate/cam/tune, the
# decoding processes in preprocess), resolved by `default_workers`:
WORKERS_HELP = "worker processes: -1 = one per core (loaders: at most 8), 0 = in this process"


# Choices of an enumerated field, declared once in the module that acts on them and named here
# as "module:NAME": those modules import torch, and `preprocess` must start without it, so the
# command line imports them only when it checks a value (see `field_choices`).
MODELS = "pneumolib.core.models:MODEL_NAMES"
MODES = "pneumolib.core.models:MODES"
WEIGHTS = "pneumolib.core.models:NAMED_WEIGHTS"
TASKS = "pneumolib.core.tasks:TASKS"
LABELS = "pneumolib.data.labels:LABELS"
SPLITS = "pneumolib.data.labels:SPLIT_RULES"
OPTIMIZERS = "pneumolib.train.setup:OPTIMIZERS"
SCHEDULES = "pneumolib.train.setup:SCHEDULES"
MONITORS = "pneumolib.train.best_epoch:MONITORS"
DEVICES = "pneumolib.core.runtime:DEVICES"
KINDS = ("classifier", "detector")  # what a run trains (Config.kind): `train`, or `detect`


def _tagged(
    *tags: str, default: Any, help: str, choices: str | None = None, or_file: bool = False
) -> Any:
    """A Config field with its tags, its one-line description (`help`: the CLI's option help),
    its `choices` ("module:NAME", see above) and whether a path to a file is allowed besides."""
    meta = {"tags": frozenset(tags), "help": help, "choices": choices, "or_file": or_file}
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # --- data -----------------------------------------------------------------------
    raw: str = _tagged(
        PATH, default="data/rsna", help="RSNA raw folder (stage_2_train_images/ + label CSVs)"
    )
    cache: str = _tagged(
        PATH,
        default="cache/rsna_256",
        help="preprocessed cache folder (images.npy, index.csv, ...)",
    )
    out: str = _tagged(
        PATH, default="runs/resnet18", help="run folder written by train (checkpoints, metrics)"
    )
    cache_size: int = _tagged(
        default=256, help="side of the square images stored in the cache, pixels"
    )
    split: str = _tagged(
        default="stratified",
        help="stratified (train/val/test) or course (24,000 train, rest val)",
        choices=SPLITS,
    )
    val_frac: float = _tagged(default=0.15, help="stratified split: share of patients in val")
    test_frac: float = _tagged(default=0.15, help="stratified split: share of patients in test")
    label: str = _tagged(
        default="pneumonia",
        help="what the model learns: pneumonia (Target) or view (AP = 1, PA = 0)",
        choices=LABELS,
    )
    task: str = _tagged(
        default="binary",
        help="binary (1 logit: pneumonia) or three-class (Normal / No Lung Opacity-Not Normal / "
        "Lung Opacity; the pneumonia probability is P(Lung Opacity))",
        choices=TASKS,
    )

    # --- model ----------------------------------------------------------------------
    kind: str = _tagged(
        default="classifier",
        help="what the run trains: classifier (train: image labels) or detector (detect: boxes)",
        choices="pneumolib.base.config:KINDS",
    )
    model: str = _tagged(default="resnet18", help="torchvision architecture", choices=MODELS)
    mode: str = _tagged(
        default="finetune",
        help="train every layer, only the head on frozen features, or from random init",
        choices=MODES,
    )
    weights: str = _tagged(
        default="imagenet",
        help="initial weights: imagenet, none, or a path to a state-dict FILE",
        choices=WEIGHTS,
        or_file=True,
    )
    image_size: int = _tagged(
        default=224, help="network input side, pixels (crops are resized to this)"
    )

    # --- optimisation ---------------------------------------------------------------
    epochs: int = _tagged(default=10, help="passes over the train split")
    batch_size: int = _tagged(
        default=64, help="effective batch size (per optimiser step, all GPUs together)"
    )
    micro_batch_size: int = _tagged(
        MACHINE, default=0, help="batch per forward pass; 0 = batch_size (no accumulation)"
    )
    lr: float = _tagged(default=1e-4, help="peak learning rate")
    weight_decay: float = _tagged(default=1e-4, help="decoupled weight decay (AdamW) or L2 (SGD)")
    optimizer: str = _tagged(default="adamw", help="optimiser", choices=OPTIMIZERS)
    momentum: float = _tagged(default=0.9, help="SGD momentum")
    schedule: str = _tagged(default="cosine", help="learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = _tagged(default=0.0, help="linear warm-up length (cosine), in epochs")
    pos_weight: float = _tagged(
        default=0.0, help="binary task: BCE positive-class weight; 0 = negatives/positives on train"
    )
    balanced_sampling: bool = _tagged(
        default=False,
        help="draw train batches class-balanced (both tasks) instead of weighting the loss",
    )

    # --- augmentation (course policy as reference) ----------------------------------
    rotate_deg: float = _tagged(STRENGTH, default=5.0, help="random tilt, +- degrees")
    translate: float = _tagged(STRENGTH, default=0.05, help="random shift, fraction of the side")
    scale_min: float = _tagged(STRENGTH, default=0.9, help="random zoom range, lower end")
    scale_max: float = _tagged(STRENGTH, default=1.1, help="random zoom range, upper end")
    crop_scale_min: float = _tagged(
        STRENGTH, default=0.35, help="random-resized-crop area range (fraction of the image), lower"
    )
    crop_scale_max: float = _tagged(
        default=1.0, help="random-resized-crop area range (fraction of the image), upper"
    )
    crop_ratio_min: float = _tagged(
        STRENGTH, default=3 / 4, help="random-resized-crop aspect-ratio range, lower end"
    )
    crop_ratio_max: float = _tagged(
        STRENGTH, default=4 / 3, help="random-resized-crop aspect-ratio range, upper end"
    )
    brightness: float = _tagged(
        STRENGTH, default=0.1, help="+- additive brightness, in [0, 1] intensity units"
    )
    contrast: float = _tagged(STRENGTH, default=0.1, help="+- relative contrast change")
    hflip: bool = _tagged(
        default=False, help="horizontal flip (off: anatomy is not left-right symmetric)"
    )

    # --- speed ----------------------------------------------------------------------
    device: str = _tagged(
        EXACT, default="auto", help="auto: CUDA when visible, else CPU", choices=DEVICES
    )
    amp: bool = _tagged(
        MACHINE,
        default=True,
        help="mixed precision on CUDA (bf16 where supported, else fp16 + scaler)",
    )
    channels_last: bool = _tagged(MACHINE, default=True, help="NHWC memory format on CUDA")
    compile: bool = _tagged(EXACT, default=False, help="torch.compile the model")
    workers: int = _tagged(EXACT, default=-1, help=WORKERS_HELP)
    gpu_augment: bool = _tagged(
        MACHINE, default=True, help="on CUDA, warp whole batches on the GPU instead of in workers"
    )

    # --- training control -----------------------------------------------------------
    monitor: str = _tagged(
        default="auc", help="validation metric for best.pt and early stopping", choices=MONITORS
    )
    patience: int = _tagged(
        STOPPING,
        default=0,
        help="early stopping after this many epochs without improvement; 0 = off",
    )
    seed: int = _tagged(
        default=0, help="seeds Python, NumPy and torch, and the augmentation streams"
    )
    deterministic: bool = _tagged(
        MACHINE, default=False, help="deterministic kernels (slower; exact resume on CPU)"
    )
    max_steps_per_epoch: int = _tagged(
        default=0, help="cap on optimiser steps per epoch; 0 = whole split"
    )
    eval_batch_size: int = _tagged(
        EXACT, default=128, help="batch size for validation and prediction"
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write(Path(path), json.dumps(self.to_dict(), indent=2))  # complete or absent

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a dict, ignoring unknown keys (configs from older versions still load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def load(cls, path: str | Path) -> Config:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:  # a run folder's config.json cut short or hand-edited
            raise UsageError(f"{path}: not valid JSON ({e})") from None

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def demo_config(root: str | Path = "pneumolib_demo", **changes: Any) -> Config:
    """The 'baby' preset: synthetic data, tiny images, a short schedule; ~2 min on 2 CPU cores."""
    root = Path(root)
    cfg = Config(
        raw=str(root / "raw"),
        cache=str(root / "cache"),
        out=str(root / "runs" / "resnet18"),
        cache_size=128,
        image_size=128,
        weights="none",
        mode="scratch",
        # Classification saturates within ~5 epochs, but where the network looks settles
        # later: Grad-CAM's peak landed in an expert box for 0.47-1.00 of the true positives
        # after 12 epochs (varying with the seed), 0.88-1.00 after 20 (9 of 10 seeds).
        epochs=20,
        batch_size=32,
        balanced_sampling=True,  # the demo's few positives: balanced batches localise better
        lr=2e-3,
        schedule="onecycle",
        crop_scale_min=0.7,
        workers=0,
        eval_batch_size=64,
    )
    return cfg.replace(**changes)


def rsna_config(root: str | Path = "/content/drive/MyDrive/pneumolib", **changes: Any) -> Config:
    """Real RSNA data at full size on a GPU (the notebooks' `rsna` profile)."""
    root = Path(root)
    cfg = Config(
        raw="/content/rsna",
        cache=str(root / "cache" / "rsna_256"),
        out=str(root / "runs" / "resnet18_finetune"),
    )
    return cfg.replace(**changes)


def field_names(*tags: str) -> tuple[str, ...]:
    """Names of the Config fields carrying any of `tags`, in declaration order. E.g. the fields
    a resumed run may change: `field_names(PATH, EXACT, STOPPING)`."""
    return tuple(f.name for f in fields(Config) if f.metadata.get("tags", frozenset()) & set(tags))


def field_help(name: str) -> str:
    """The one-line description declared beside Config field `name`."""
    return Config.__dataclass_fields__[name].metadata["help"]


def field_choices(name: str) -> tuple[str, ...] | None:
    """The values Config field `name` may take (None: any value of its type). Imports the module
    that declares them, so call it only where that module's imports are affordable."""
    ref = Config.__dataclass_fields__[name].metadata.get("choices")
    if ref is None:
        return None
    module, attr = ref.split(":")
    return tuple(getattr(importlib.import_module(module), attr))


def default_workers(requested: int = -1, *, cap: int | None = None) -> int:
    """Worker processes for a `workers` setting, the same in every command: a negative value
    (-1, the default) = one per available core (at most `cap`), 0 = none (the work runs in this
    process), N = N."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, cap or cores or 1))
