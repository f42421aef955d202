"""One configuration dataclass for the whole pipeline, with a `demo` and an `rsna` preset.

Override fields with `dataclasses.replace(cfg, lr=2e-4)` or on the command line
(`python -m pneumolib train --lr 2e-4`). The config is stored whole in every run folder
(`config.json`) and checkpoint, so a run can be rebuilt from its folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# What a field is, declared once beside it (`_tagged`); the field lists other modules need are
# derived from these tags by `field_names`:
PATH = "path"  # where things are: never changes a result
EXACT = "exact"  # how fast, with the same numbers (device, workers, compile, eval batch)
MACHINE = "machine"  # how fast on this machine, numbers may differ in the last bits
STOPPING = "stopping"  # when to stop early, not how each epoch trains
STRENGTH = "strength"  # an augmentation range scaled by the sweep's augmentation strength


def _tagged(*tags: str, default: Any) -> Any:
    return field(default=default, metadata={"tags": frozenset(tags)})


@dataclass
class Config:
    # --- data -----------------------------------------------------------------------
    # RSNA raw folder (stage_2_train_images/ + label CSVs)
    raw: str = _tagged(PATH, default="data/rsna")
    # preprocessed cache folder (images.npy, index.csv, ...)
    cache: str = _tagged(PATH, default="cache/rsna_256")
    # run folder written by train (checkpoints, metrics)
    out: str = _tagged(PATH, default="runs/resnet18")
    cache_size: int = 256  # side of the square images stored in the cache, pixels
    split: str = "stratified"  # "stratified" (train/val/test) or "course" (24,000 train, rest val)
    val_frac: float = 0.15  # stratified split: share of patients in val
    test_frac: float = 0.15  # stratified split: share of patients in test

    label: str = "pneumonia"  # what the model learns: pneumonia (Target) | view (AP = 1, PA = 0)
    # binary (1 logit: pneumonia) | three-class (Normal / No Lung Opacity-Not Normal / Lung
    # Opacity; the pneumonia probability is P(Lung Opacity)); see pneumolib.core.tasks
    task: str = "binary"

    # --- model ----------------------------------------------------------------------
    model: str = "resnet18"  # torchvision architecture name
    mode: str = "finetune"  # finetune | feature-extraction | scratch
    weights: str = "imagenet"  # imagenet | none | path to a state-dict file
    image_size: int = 224  # network input side, pixels (crops are resized to this)

    # --- optimisation ---------------------------------------------------------------
    epochs: int = 10  # passes over the train split
    batch_size: int = 64  # effective batch size (per optimiser step, all GPUs together)
    # batch per forward pass; 0 = batch_size (no accumulation)
    micro_batch_size: int = _tagged(MACHINE, default=0)
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 1e-4  # decoupled weight decay (AdamW) or L2 (SGD)
    optimizer: str = "adamw"  # adam | adamw | sgd
    momentum: float = 0.9  # SGD momentum
    schedule: str = "cosine"  # none | cosine | onecycle
    warmup_epochs: float = 0.0  # linear warm-up length (cosine), in epochs
    # binary task: BCE positive-class weight; 0 = negatives/positives on train
    pos_weight: float = 0.0
    # draw train batches class-balanced (both tasks) instead of weighting the loss
    balanced_sampling: bool = False

    # --- augmentation (course policy as reference) ----------------------------------
    rotate_deg: float = _tagged(STRENGTH, default=5.0)  # random tilt, +- degrees
    translate: float = _tagged(STRENGTH, default=0.05)  # random shift, fraction of the side
    scale_min: float = _tagged(STRENGTH, default=0.9)  # random zoom range
    scale_max: float = _tagged(STRENGTH, default=1.1)
    # random-resized-crop area range (fraction of the image)
    crop_scale_min: float = _tagged(STRENGTH, default=0.35)
    crop_scale_max: float = 1.0
    # random-resized-crop aspect-ratio range
    crop_ratio_min: float = _tagged(STRENGTH, default=3 / 4)
    crop_ratio_max: float = _tagged(STRENGTH, default=4 / 3)
    # +- additive brightness, in [0, 1] intensity units
    brightness: float = _tagged(STRENGTH, default=0.1)
    contrast: float = _tagged(STRENGTH, default=0.1)  # +- relative contrast change
    hflip: bool = False  # horizontal flip (off: anatomy is not left-right symmetric)

    # --- speed ----------------------------------------------------------------------
    device: str = _tagged(EXACT, default="auto")  # auto | cpu | cuda
    # mixed precision on CUDA (bf16 where supported, else fp16 + scaler)
    amp: bool = _tagged(MACHINE, default=True)
    channels_last: bool = _tagged(MACHINE, default=True)  # NHWC memory format on CUDA
    compile: bool = _tagged(EXACT, default=False)  # torch.compile the model
    # loader worker processes; -1 = one per core (at most 8)
    workers: int = _tagged(EXACT, default=-1)
    # on CUDA, warp whole batches on the GPU instead of in workers
    gpu_augment: bool = _tagged(MACHINE, default=True)

    # --- training control -----------------------------------------------------------
    monitor: str = "auc"  # validation metric for best.pt and early stopping
    # early stopping after this many epochs without improvement; 0 = off
    patience: int = _tagged(STOPPING, default=0)
    seed: int = 0  # seeds Python, NumPy and torch, and the augmentation streams
    # deterministic kernels (slower; exact resume on CPU)
    deterministic: bool = _tagged(MACHINE, default=False)
    max_steps_per_epoch: int = 0  # cap on optimiser steps per epoch; 0 = whole split
    eval_batch_size: int = _tagged(EXACT, default=128)  # batch size for validation and prediction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a dict, ignoring unknown keys (configs from older versions still load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

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
