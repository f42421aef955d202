"""A run folder (output of `train`, read by `evaluate`, `cam`, `predict`, `card`): every file
name declared once and reading its result files (its errors are `base.errors.RunError`). Torch-free,
so the model card can import it; checkpoints themselves are `core.checkpoint`.

RUN/config.json, metrics.csv (one row per epoch), last.pt, best.pt, checkpoint_config.json
(the config each checkpoint holds, by its sha256), owner.json (a sweep trial's worker),
calibration.json, ood.npz (the out-of-distribution check), box_rule.json (maps -> boxes),
predictions_<split>.csv (+ its .meta.json sidecar), metrics_<split>.json,
cam_<split>[_<tag>].csv/.json, boxes_<split>.csv, figures/, MODEL_CARD.md; `<split>` gets
a `_tta` suffix for test-time-augmented results.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumolib.base.config import EXACT, STOPPING, Config, field_names
from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write

CONFIG = "config.json"  # the whole Config the run was started with (a user may edit it)
CHECKPOINT_CONFIG = "checkpoint_config.json"  # each checkpoint's sha256 and its Config
METRICS = "metrics.csv"  # one row per epoch
LAST = "last.pt"  # the latest epoch's checkpoint (resume from here)
BEST = "best.pt"  # the best epoch's checkpoint (evaluate, cam, predict use it)
FIGURES = "figures"  # PNGs of evaluate, cam and the demo
CARD = "MODEL_CARD.md"
CALIBRATION = "calibration.json"  # fitted on val: prior correction, temperature, operating points
DDP_CHECK = "ddp_check.json"  # per-rank weight checksums of a multi-GPU run
OWNER = "owner.json"  # which sweep worker may write the run (`core.owner`)
OOD = "ood.npz"  # fitted on train + val: the out-of-distribution check (`evaluate.ood`)
BOX_RULE = "box_rule.json"  # fitted on val: how `cam` turns maps into boxes (`cam.boxes`)

# Columns read as text (ids, codes and class names that would otherwise parse as numbers/NaN).
TEXT_COLUMNS = {"patientId": str, "sex": str, "view": str, "class": str}


def split_tag(split: str, tta: bool = False) -> str:
    """The suffix of a split's result files: `<split>` or `<split>_tta`."""
    return f"{split}_tta" if tta else split


def config_path(run: str | Path) -> Path:
    """RUN/config.json."""
    return Path(run) / CONFIG


def checkpoint_config_path(run: str | Path) -> Path:
    """RUN/checkpoint_config.json: {checkpoint name: {sha256, config}}, written beside each
    checkpoint so that torch-free readers (the card) know the config it was trained with."""
    return Path(run) / CHECKPOINT_CONFIG


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


def box_rule_path(run: str | Path) -> Path:
    """RUN/box_rule.json (`cam.boxes`)."""
    return Path(run) / BOX_RULE


def ood_path(run: str | Path) -> Path:
    """RUN/ood.npz (`evaluate.ood`)."""
    return Path(run) / OOD


def boxes_path(run: str | Path, split: str) -> Path:
    """RUN/boxes_<split>.csv: Kaggle's `patientId, PredictionString`, original pixels (written
    by `cam` from maps, by `evaluate` on a detector run)."""
    return Path(run) / f"boxes_{split}.csv"


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


# --------------------------------------------------------------------------- the trained config
# Fields a report never depends on, and that a resumed run may change without config.json being
# rewritten (device, workers, patience): a difference in them is not worth a warning.
_UNREPORTED = frozenset(field_names(EXACT, STOPPING))


@dataclass(frozen=True)
class TrainedConfig:
    """The config a run's checkpoint was trained with, as every report uses it."""

    config: Config
    source: str  # the file it was read from: checkpoint_config.json, or config.json
    checkpoint_sha256: str | None  # of the checkpoint now in the folder (None: there is none)
    message: str | None  # the one warning or note line to print, None when all agree


def record_checkpoint_config(run: str | Path, name: str, *, sha256: str, config: dict) -> None:
    """Record in RUN/checkpoint_config.json that checkpoint `name` (best.pt, last.pt), whose
    bytes hash to `sha256`, holds `config` (a `Config.to_dict()`). Called after each save."""
    path = checkpoint_config_path(run)
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:  # a damaged record is rewritten from what is known now
        record = {}
    if not isinstance(record, dict):
        record = {}
    record[name] = {"sha256": sha256, "config": config}
    atomic_write(path, json.dumps(record, indent=2))


def _recorded(run: Path, sha256: str) -> dict | None:
    """The config dict RUN/checkpoint_config.json holds for the checkpoint with `sha256`."""
    try:
        record = json.loads(checkpoint_config_path(run).read_text())
    except (OSError, ValueError):
        return None
    entries = record.values() if isinstance(record, dict) else []
    found = [e["config"] for e in entries if isinstance(e, dict) and e.get("sha256") == sha256]
    return found[0] if found and isinstance(found[0], dict) else None


def _changes(edited: dict[str, Any], trained: dict[str, Any]) -> str:
    """'image_size: 224 -> 256, lr: ...' for each reported field that differs."""
    return ", ".join(
        f"{k}: {trained[k]!r} -> {edited.get(k)!r}"
        for k in trained
        if k not in _UNREPORTED and edited.get(k) != trained[k]
    )


def trained_config(run: str | Path, *, checkpoint: str = BEST) -> TrainedConfig:
    """The Config RUN/`checkpoint` was trained with, read without torch from
    RUN/checkpoint_config.json, and the one line to print where RUN/config.json says otherwise
    (it was edited after training) or the record is missing (a run older than it: config.json
    is used, with a note). No checkpoint: config.json, without a message."""
    run = Path(run)
    cfg_file, ckpt = config_path(run), run / checkpoint
    if not ckpt.is_file():
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{cfg_file}: not found; is {run} a run folder (python -m pneumolib train)?"
            )
        return TrainedConfig(Config.load(cfg_file), CONFIG, None, None)
    sha = file_sha256(ckpt)
    trained = _recorded(run, sha)
    if trained is None:
        record = checkpoint_config_path(run)
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: not found; is {run} a run folder?")
        message = (
            f"warning: {record} does not describe the {checkpoint} in the folder (replaced "
            f"after training?); reports read {cfg_file}"
            if record.is_file()
            else f"note: {record} not found, so the config {checkpoint} was trained with is "
            f"not known without torch; reports read {cfg_file}"
        )
        return TrainedConfig(Config.load(cfg_file), CONFIG, sha, message)
    config = Config.from_dict(trained)
    warning = _edit_warning(cfg_file, config, checkpoint)
    return TrainedConfig(config, CHECKPOINT_CONFIG, sha, warning)


def _edit_warning(cfg_file: Path, trained: Config, checkpoint: str) -> str | None:
    """The warning line for a RUN/config.json that no longer says what `trained` says."""
    if not cfg_file.is_file():
        return None
    try:
        changes = _changes(Config.load(cfg_file).to_dict(), trained.to_dict())
    except UsageError:
        changes = None
    if changes == "":
        return None
    what = (
        f"differs from the config {checkpoint} was trained with ({changes})"
        if changes
        else "is not valid JSON"
    )
    return f"warning: {cfg_file} {what}; reports use {checkpoint}'s"


def report_config(run: str | Path, *, checkpoint: str = BEST) -> TrainedConfig:
    """`trained_config`, with its message printed on stderr: what every command that reports a
    run calls, once per run it reports."""
    found = trained_config(run, checkpoint=checkpoint)
    if found.message:
        print(found.message, file=sys.stderr)
    return found
