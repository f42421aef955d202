"""Reading a run folder's result files (written by `pneumolib.evaluate.run`): one place that knows
their names, column types and how a checkpoint is identified, for `evaluate`, `compare` and
the model card."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

# Columns read as text (ids, codes and class names that would otherwise parse as numbers/NaN).
TEXT_COLUMNS = {"patientId": str, "sex": str, "view": str, "class": str}


def predictions_path(run: str | Path, split: str = "val", tta: bool = False) -> Path:
    """RUN/predictions_<split>[_tta].csv."""
    return Path(run) / f"predictions_{split}{'_tta' if tta else ''}.csv"


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
