"""A run's model card: RUN/MODEL_CARD.md, in the sections of Mitchell et al., "Model Cards for
Model Reporting" (FAT* 2019): model details, intended use, data, metrics, calibration,
subgroups (factors), localisation, ethical considerations, caveats.

Every figure is read from the run folder's own files (the config best.pt was trained with, from
checkpoint_config.json; metrics.csv, best.pt's hash, metrics_<split>.json, cam_<split>*.json)
and its cache's (index.csv, stats.json, errors.csv); a section whose file is missing says so
and names the command that makes it. An edited config.json changes nothing on the card: one
warning line names the fields it changed (`base.rundir.trained_config`). A
run trained on synthetic data says so first, in bold. No model is loaded and torch is not
imported, except to read the provenance from best.pt when the cache is gone. `write_card` is
`python -m pneumolib card --run RUN`, and `evaluate --split test` calls it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumolib.base.config import Config
from pneumolib.base.errors import RunError, UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import (
    BEST,
    CAM_SUMMARIES,
    best_path,
    card_path,
    metrics_csv_path,
    report_config,
    split_metrics_path,
)
from pneumolib.data.cache_files import STATS, errors_path, index_path, stats_path
from pneumolib.data.cache_stats import CacheStats
from pneumolib.data.provenance import TRUTH_CSV, is_synthetic
from pneumolib.evaluate import card_sections as sec
from pneumolib.evaluate import card_use as use

SPLITS = ("val", "test")
PAPER = 'Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019)'


@dataclass
class RunFiles:
    """What the card reads from a run folder and its cache (None: the file is not there)."""

    run: Path
    config: Config  # the one best.pt was trained with (`base.rundir.trained_config`)
    config_from: str  # the file it was read from
    history: pd.DataFrame | None  # metrics.csv
    metrics: dict[str, dict | None]  # split -> metrics_<split>.json
    localisation: list[dict]  # cam_*.json, each with its file name under "file"
    checkpoint_sha256: str | None  # of best.pt as it is now
    stats: CacheStats | None  # CACHE/stats.json
    index: pd.DataFrame | None  # CACHE/index.csv
    n_errors: int | None  # rows of CACHE/errors.csv
    synthetic: bool | None  # None: not recorded
    provenance_from: str  # which file said so
    noisy_labels: tuple[int, int] | None  # (disagreeing, all) from demo_truth.csv


# --------------------------------------------------------------------------- reading
def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None


def _localisation(run: Path) -> list[dict]:
    """cam_<split>[_<tag>].json summaries, val before test, each with its file name."""

    def order(p: Path) -> tuple:
        split = p.stem.split("_")[1]
        return (SPLITS.index(split) if split in SPLITS else len(SPLITS), p.stem)

    found = []
    for path in sorted(run.glob(CAM_SUMMARIES), key=order):
        summary = _json(path)
        if summary and "n" in summary:
            found.append(summary | {"file": path.name})
    return found


def _cache_files(cache: Path) -> tuple[CacheStats | None, pd.DataFrame | None, int | None]:
    """(stats.json, index.csv, rows of errors.csv) of a cache; None for what is missing."""
    if not cache.is_dir():
        return None, None, None
    found = _json(stats_path(cache))
    stats = CacheStats.from_dict(found) if found is not None else None
    index = None
    if index_path(cache).is_file():
        index = pd.read_csv(index_path(cache), dtype={"patientId": str, "view": str})
    errors = errors_path(cache)  # absent or empty when every file was read
    n_errors = len(pd.read_csv(errors)) if errors.is_file() and errors.stat().st_size else 0
    return stats, index, n_errors


def _provenance(stats: CacheStats | None, checkpoint: Path) -> tuple[bool | None, str]:
    """Whether the training data was synthetic, and which file says so: the cache's stats.json;
    for a cache older than that record, the raw folder's marker; with no cache, best.pt."""
    if stats is not None and stats.synthetic is not None:
        return stats.synthetic, f"the cache's {STATS}"
    if stats is not None:
        raw = Path(stats.source or "")
        if raw.is_dir():
            return is_synthetic(raw), f"the raw folder {raw} (the cache does not record it)"
        return None, "nowhere"
    if checkpoint.is_file():
        # Only here is torch imported: the cache is gone and best.pt is the last record.
        from pneumolib.core.checkpoint import load_checkpoint

        try:
            flag = load_checkpoint(checkpoint).get("stats", {}).get("synthetic")
        except RunError:  # a damaged best.pt: the card still says what it can
            flag = None
        return flag, BEST if flag is not None else "nowhere"
    return None, "nowhere"


def _noisy_labels(stats: CacheStats | None) -> tuple[int, int] | None:
    """Labels that disagree with their phantom, from the demo folder's truth table, if any."""
    truth = Path(stats.source or "") / TRUTH_CSV if stats else None
    if truth is None or not truth.is_file():
        return None
    t = pd.read_csv(truth, keep_default_na=False)
    return int((t["label_noise"] != "").sum()), len(t)


def read_run(run: str | Path) -> RunFiles:
    """Everything the card shows, read from RUN and the cache its checkpoint was trained on.
    Prints one line on stderr where config.json was edited after training."""
    run = Path(run)
    trained = report_config(run)
    config = trained.config
    history = pd.read_csv(metrics_csv_path(run)) if metrics_csv_path(run).is_file() else None
    ckpt = best_path(run)
    stats, index, n_errors = _cache_files(Path(config.cache))
    synthetic, where = _provenance(stats, ckpt)
    return RunFiles(
        run=run,
        config=config,
        config_from=trained.source,
        history=history,
        metrics={s: _json(split_metrics_path(run, s)) for s in SPLITS},
        localisation=_localisation(run),
        checkpoint_sha256=trained.checkpoint_sha256,
        stats=stats,
        index=index,
        n_errors=n_errors,
        synthetic=synthetic,
        provenance_from=where,
        noisy_labels=_noisy_labels(stats),
    )


# --------------------------------------------------------------------------- the card
def header(f: RunFiles) -> list[str]:
    lines = [f"# Model card: {f.run.name}", ""]
    if f.synthetic:
        lines += [
            "**Trained on synthetic data: phantoms made by `pneumolib.data.synth`, not radiographs "
            "of patients. Every number below describes those phantoms, not pneumonia on real "
            "chest films.**",
            "",
        ]
    lines += [
        f"After {PAPER}. Written by `python -m pneumolib card --run {f.run}` from the files "
        "each section names; run it again after any of them changes.",
        "",
    ]
    evaluated = {s: (m or {}).get("checkpoint", {}).get("sha256") for s, m in f.metrics.items()}
    stale = [s for s, sha in evaluated.items() if sha and f.checkpoint_sha256 not in (None, sha)]
    if stale:
        lines += [
            f"**The {' and '.join(stale)} metrics were computed on another checkpoint than the "
            "best.pt now in the folder: run `evaluate` again.**",
            "",
        ]
    return lines


def model_details(f: RunFiles) -> list[str]:
    cfg = f.config
    task = cfg.task  # Config.from_dict gives runs from before the three-class task "binary"
    cache_px = f.stats.size if f.stats else cfg.cache_size
    rows: list[list[Any]] = [
        ["task", f"{task}; label `{cfg.label}`"],
        ["architecture", f"{cfg.model} (torchvision), 1-channel input"],
        ["training mode", cfg.mode],
        ["initial weights", cfg.weights],
        ["input size", f"{cfg.image_size} px (cache images {cache_px} px)"],
        ["optimiser", f"{cfg.optimizer}, schedule {cfg.schedule}"],
        ["learning rate", f"{cfg.lr:g}"],
        ["batch size", cfg.batch_size],
        ["balanced batches", "yes" if cfg.balanced_sampling else "no"],
        ["seed", cfg.seed],
    ]
    if f.history is not None and len(f.history):
        rows += [
            ["epochs", f"{len(f.history)} trained of {cfg.epochs} planned"],
            ["training time", f"{f.history['seconds'].sum():.1f} s (metrics.csv)"],
        ]
    else:
        rows += [["epochs", "not trained yet (no metrics.csv)"]]
    sha = f.checkpoint_sha256
    rows += [["checkpoint", f"best.pt, sha256 `{sha}`" if sha else "no best.pt"]]
    lines = ["## Model details", "", f"From {f.config_from}, metrics.csv and best.pt.", ""]
    return lines + sec.table(["field", "value"], rows) + [""]


def _missing(f: RunFiles) -> list[str]:
    """What a finished study would have that this run folder lacks (caveats' list)."""
    out = [f"{s} metrics (no metrics_{s}.json)" for s, m in f.metrics.items() if m is None]
    if not f.localisation:
        out.append("localisation (no cam_<split>.json)")
    if f.stats is None:
        out.append(f"the data counts (cache {f.config.cache} not found)")
    return out


def card_text(f: RunFiles) -> str:
    """The Markdown of the card for what `read_run` found."""
    run = str(f.run)
    lines = header(f) + model_details(f) + use.intended_use_section()
    lines += sec.data_section(
        cache=f.config.cache,
        stats=f.stats,
        index=f.index,
        n_errors=f.n_errors,
        synthetic=f.synthetic,
        provenance_from=f.provenance_from,
    )
    lines += sec.metrics_section(f.metrics, run)
    lines += sec.calibration_section(f.metrics, run)
    lines += sec.subgroup_section(f.metrics, run)
    lines += sec.localisation_section(f.localisation, run)
    lines += use.ethics_section(f.synthetic)
    lines += use.caveats_section(
        index=f.index, metrics=f.metrics, noisy_labels=f.noisy_labels, missing=_missing(f)
    )
    return "\n".join(lines).rstrip("\n") + "\n"


def write_card(run: str | Path) -> Path:
    """Write RUN/MODEL_CARD.md (whole or not at all) from the run's files; returns its path."""
    text = card_text(read_run(run))
    path = card_path(run)
    atomic_write(path, text)
    return path
