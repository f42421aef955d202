"""A run folder (output of `train`, read by `evaluate`, `cam`, `predict`, `card`): every file
name declared once and reading its result files (its errors are `base.errors.RunError`). Torch-free,
so the model card can import it; checkpoints themselves are `core.checkpoint`.

RUN/config.json, metrics.csv (one row per epoch), last.pt, best.pt, owner.json (a sweep
trial's worker), calibration.json, ood.npz (the out-of-distribution check),
predictions_<split>.csv (+ its .meta.json sidecar), metrics_<split>.json,
cam_<split>[_<tag>].csv/.json, figures/, MODEL_CARD.md; `<split>` gets a `_tta` suffix for
test-time-augmented results.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

CONFIG = "config.json"  # the whole Config the run was trained with
METRICS = "metrics.csv"  # one row per epoch
LAST = "last.pt"  # the latest epoch's checkpoint (resume from here)
BEST = "best.pt"  # the best epoch's checkpoint (evaluate, cam, predict use it)
FIGURES = "figures"  # PNGs of evaluate, cam and the demo
CARD = "MODEL_CARD.md"
CALIBRATION = "calibration.json"  # fitted on val: prior correction, temperature, operating points
DDP_CHECK = "ddp_check.json"  # per-rank weight checksums of a multi-GPU run
OWNER = "owner.json"  # which sweep worker may write the run (`core.owner`)
OOD = "ood.npz"  # fitted on train + val: the out-of-distribution check (`evaluate.ood`)

# Columns read as text (ids, codes and class names that would otherwise parse as numbers/NaN).
TEXT_COLUMNS = {"patientId": str, "sex": str, "view": str, "class": str}


def split_tag(split: str, tta: bool = False) -> str:
    """The suffix of a split's result files: `<split>` or `<split>_tta`."""
    return f"{split}_tta" if tta else split


def config_path(run: str | Path) -> Path:
    """RUN/config.json."""
    return Path(run) / CONFIG


def metrics_csv_path(run: str | Path) -> Path:
    """RUN/metrics.csv (per epoch)."""
    return Path(run) / METRICS


def last_path(run: str | Path) -> Path:
    """RUN/last.pt."""
    return Path(run) / LAST


def best_path(run: str | Path) -> Path:
    """RUN/best.pt."""
    return Path(run) / BEST


def owner_path(run: str | Path) -> Path:
    """RUN/owner.json: the sweep worker that holds the run (`core.owner`)."""
    return Path(run) / OWNER


def figures_dir(run: str | Path) -> Path:
    """RUN/figures/."""
    return Path(run) / FIGURES


def card_path(run: str | Path) -> Path:
    """RUN/MODEL_CARD.md."""
    return Path(run) / CARD


def calibration_path(run: str | Path) -> Path:
    """RUN/calibration.json (`evaluate.calibration`)."""
    return Path(run) / CALIBRATION


def ood_path(run: str | Path) -> Path:
    """RUN/ood.npz (`evaluate.ood`)."""
    return Path(run) / OOD


def predictions_name(split: str = "val", tta: bool = False) -> str:
    """predictions_<split>[_tta].csv (the name recorded in metrics_<split>.json)."""
    return f"predictions_{split_tag(split, tta)}.csv"


def predictions_path(run: str | Path, split: str = "val", tta: bool = False) -> Path:
    """RUN/predictions_<split>[_tta].csv."""
    return Path(run) / predictions_name(split, tta)


def predictions_meta_path(run: str | Path, split: str = "val", tta: bool = False) -> Path:
    """RUN/predictions_<split>[_tta].meta.json: which checkpoint and cache rows made the CSV."""
    return Path(run) / f"predictions_{split_tag(split, tta)}.meta.json"


def split_metrics_path(run: str | Path, tag: str) -> Path:
    """RUN/metrics_<tag>.json (`tag`: a split, or `split_tag(split, tta)`)."""
    return Path(run) / f"metrics_{tag}.json"


def samples_figure_path(run: str | Path, tag: str) -> Path:
    """RUN/figures/samples_<tag>.png (evaluate's grid of example predictions)."""
    return figures_dir(run) / f"samples_{tag}.png"


def cam_stem(split: str, tag: str = "") -> str:
    """cam_<split>[_<tag>]: the stem of cam's CSV, JSON and overlay folder."""
    return f"cam_{split}_{tag}" if tag else f"cam_{split}"


CAM_SUMMARIES = "cam_*.json"  # glob of every cam summary in a run folder


def read_predictions(run: str | Path, split: str = "val", tta: bool = False) -> pd.DataFrame:
    """RUN/predictions_<split>[_tta].csv as written by `evaluate.evaluate_run`: `patientId,
    prob, target, view, sex, age` (+ `class, prob_<class>` for a three-class run)."""
    path = predictions_path(run, split, tta)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `python -m pneumolib evaluate` first")
    return pd.read_csv(path, dtype=TEXT_COLUMNS)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (a checkpoint's identity in metrics files, sidecars and the card)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
