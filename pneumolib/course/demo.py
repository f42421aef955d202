"""`python -m pneumolib demo`: the whole pipeline on data the package makes itself.

Synthetic RSNA-shaped DICOMs (`synth`, realism "rsna": as hard as the real task, for the same
reasons) -> cache -> training -> evaluation (val and test) -> CAMs scored against the boxes ->
the run's model card (MODEL_CARD.md) -> a small batch-size x learning-rate sweep repeated over
three seeds -> OUT/report.md, which
says in a sentence what each result shows. About five minutes on two CPU cores; every step is
idempotent, so an interrupted demo resumes when run again. Demo numbers describe synthetic
phantoms, not pneumonia on real radiographs.

`pretext_weights` makes the demo profile's stand-in for ImageNet weights: a network trained on
another task (telling AP from PA films) on other phantoms.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TypedDict

import pandas as pd

from pneumolib.base.config import Config, demo_config
from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import best_path, figures_dir
from pneumolib.cam.run import cam_run
from pneumolib.course.report import write_report
from pneumolib.data.preprocess import cache_for
from pneumolib.data.synth import make_demo_data
from pneumolib.evaluate.card import write_card
from pneumolib.evaluate.run import evaluate_run
from pneumolib.train.curves import plot_history
from pneumolib.train.loop import fit
from pneumolib.tune import plot_heatmap, sweep

DEMO_N, DEMO_SIZE = 500, 1024  # 500 patients (75 in test) in DICOMs as large as RSNA's
SWEEP_SEEDS = (0, 1, 2)  # the sweep is repeated per training seed: does its best point hold?


class SweepGrid(TypedDict):
    """`sweep`'s grid keywords, so that `sweep(cfg, **SWEEP_GRID)` is type-checked."""

    batch_sizes: list[int]
    lrs: list[float]


SWEEP_GRID: SweepGrid = {"batch_sizes": [16, 64], "lrs": [1e-3, 3e-3]}


def _step(title: str) -> float:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)), flush=True)
    return time.perf_counter()


def make_cache(cfg: Config, *, n: int, size: int, seed: int = 0, progress: bool = True) -> Path:
    """Demo data (`n` phantoms of `size` px, data seed `seed`) at `cfg.raw` and its cache at
    `cfg.cache`, both made only when missing; returns the cache."""
    make_demo_data(cfg.raw, n=n, size=size, seed=seed)
    return cache_for(cfg, progress=progress)


def pretext_weights(root: str | Path, *, n: int = 300, epochs: int = 6) -> Path:
    """Weights for the demo's fine-tuning and feature extraction -> ROOT/pretext_view/best.pt.

    A ResNet18 trained from scratch to tell AP from PA films (`Config.label="view"`) on `n`
    phantoms of its own (data seed 1, not the demo's patients): another task on other images,
    as ImageNet is for RSNA. Its features know film quality and heart size, not opacities, so
    feature extraction can find pneumonia only through what those features carry (the view
    is confounded with the label), while fine-tuning can learn the opacities. Made once.
    """
    root = Path(root)
    cfg = demo_config(
        root,
        raw=str(root / "pretext_raw"),
        cache=str(root / "pretext_cache"),
        out=str(root / "pretext_view"),
        label="view",
        epochs=epochs,
        balanced_sampling=False,
    )
    best = best_path(cfg.out)
    if not best.is_file():
        make_cache(cfg, n=n, size=256, seed=1, progress=False)
        fit(cfg)
    return best


def run_demo(out: str | Path = "pneumolib_demo", quick: bool = False) -> Path:
    """Run every stage on the demo profile into `out`; returns the path of report.md."""
    out = Path(out)
    cfg: Config = demo_config(out)
    n, epochs = (200, 3) if quick else (DEMO_N, cfg.epochs)
    cfg = cfg.replace(epochs=epochs, raw=str(out / f"raw_{n}"))
    times: dict[str, float] = {}

    t = _step(f"1-2. {n} phantom DICOMs ({DEMO_SIZE} px, realism 'rsna') -> cache {cfg.cache}")
    make_cache(cfg, n=n, size=DEMO_SIZE)
    times["data + preprocess"] = time.perf_counter() - t

    t = _step(f"3. train {cfg.model} ({cfg.mode}, {cfg.epochs} epochs) -> {cfg.out}")
    summary = fit(cfg)
    run = Path(cfg.out)
    figures_dir(run).mkdir(exist_ok=True)
    plot_history({cfg.mode: summary["history"]}).savefig(figures_dir(run) / "curves.png", dpi=100)
    times["train"] = time.perf_counter() - t

    t = _step("4. evaluate on val (thresholds chosen here) and test (thresholds applied)")
    metrics = {split: evaluate_run(run, split, n_boot=1000) for split in ("val", "test")}
    times["evaluate"] = time.perf_counter() - t

    t = _step("5. Grad-CAM (layer2) on val and test true positives, scored against the boxes")
    loc = {
        split: cam_run(run, split, n_overlays=8, method="gradcam", layer="layer2")
        for split in ("val", "test")
    }
    times["cam"] = time.perf_counter() - t
    print(f"model card: {write_card(run)}")  # after evaluate and cam: the card holds both

    # 12 one-epoch trials: 123 s at 128 px on one thread; --quick sweeps at 64 px (as notebook
    # 06's demo does), 59 s, since one epoch teaches a network little at any size.
    sweep_cfg = cfg.replace(image_size=64) if quick else cfg
    t = _step(
        f"6. batch-size x learning-rate sweep at {sweep_cfg.image_size} px, once per seed "
        f"{list(SWEEP_SEEDS)}"
    )
    tables = demo_sweep(sweep_cfg, out / "sweep", epochs=1)
    times["sweep"] = time.perf_counter() - t

    report = out / "report.md"
    text = write_report(
        cfg, summary=summary, metrics=metrics, loc=loc, tables=tables, times=times, out=out
    )
    atomic_write(report, text)
    atomic_write(
        out / "report.json",
        json.dumps({"test_auc": metrics["test"].get("roc_auc"), "times": times}),
    )
    print(f"\nreport: {report}")
    return report


def demo_sweep(cfg: Config, folder: Path, *, epochs: int) -> dict[int, pd.DataFrame]:
    """The demo's sweep of `SWEEP_GRID`, once per seed of `SWEEP_SEEDS` -> seed -> table.

    Writes FOLDER/heatmap.png (val AUC, mean over seeds) and FOLDER/seeds.csv."""
    tables = {}
    for seed in SWEEP_SEEDS:
        tables[seed] = sweep(
            cfg.replace(epochs=epochs, seed=seed, out=str(folder)),
            **SWEEP_GRID,
            study=f"demo_{Path(cfg.raw).name}_s{seed}",  # --quick and full differ in raw_N
            progress=False,
        ).drop(columns="run_dir")
    every = pd.concat([t.assign(seed=s) for s, t in tables.items()], ignore_index=True)
    every.to_csv(folder / "seeds.csv", index=False)
    plot_heatmap(every, "val_auc").savefig(folder / "heatmap.png", dpi=100)  # seeds' mean
    return tables
