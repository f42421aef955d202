"""Catching a shortcut: the same patients with a "PORTABLE" marker burned into every AP film.

Real portable (AP) films carry such text, and AP films are far more often positive, so a
network can score the text instead of the lungs. `shortcut_run` trains the demo's model on a
copy of the demo data that differs only by the marker (`synth.make_demo_data(...,
shortcut=True)` draws the same phantoms, labels and split); `shortcut_table` sets it beside the
clean run: AUC overall and within each view, and the share of Grad-CAM's evidence that lies on
the marker of AP films (`marker_energy`). Notebook 05 shows it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pneumolib.cam import cam_examples
from pneumolib.config import Config
from pneumolib.data import read_index
from pneumolib.evaluate import evaluate_run
from pneumolib.localisation import energy_in_box
from pneumolib.preprocess import build_cache
from pneumolib.synth import make_demo_data, marker_box
from pneumolib.train import fit


def shortcut_run(cfg: Config, data: dict, root: str | Path) -> Path:
    """Train `cfg` (the clean demo run's config) on the demo data `data` (make_demo_data's
    n, size, seed) remade with the AP marker, under ROOT/shortcut/; -> the run folder."""
    root = Path(root) / "shortcut"
    sc = cfg.replace(
        raw=str(root / "raw"), cache=str(root / "cache"), out=str(root / "runs" / "resnet18")
    )
    make_demo_data(sc.raw, **data, shortcut=True)
    build_cache(
        sc.raw,
        sc.cache,
        size=sc.cache_size,
        split=sc.split,
        seed=sc.seed,
        val_frac=sc.val_frac,
        test_frac=sc.test_frac,
        progress=False,
    )
    if not (Path(sc.out) / "best.pt").is_file():
        fit(sc)
    return Path(sc.out)


def marker_energy(run: str | Path, split: str = "test") -> pd.DataFrame:
    """Per AP film of `split`: patientId, target, prob and `marker_energy`, the share of the
    Grad-CAM (layer2) map inside the marker's box (where the text is, or would be)."""
    run = Path(run)
    cfg = Config.load(run / "config.json")
    index = read_index(cfg.cache)
    ids = index.patientId[(index.split == split) & (index.view == "AP")].tolist()
    ex = cam_examples(run, ids, method="gradcam", layer="layer2")
    size = ex["maps"].shape[-1]
    energy = energy_in_box(ex["maps"], [[marker_box(size)]] * len(ids))
    return pd.DataFrame(
        {"patientId": ids, "target": ex["targets"], "prob": ex["probs"], "marker_energy": energy}
    )


def _view_auc(pred: pd.DataFrame, view: str) -> float:
    sub = pred[pred.view == view]
    return float(roc_auc_score(sub.target, sub.prob)) if sub.target.nunique() == 2 else np.nan


def shortcut_table(runs: dict[str, str | Path], split: str = "test") -> pd.DataFrame:
    """One row per named run: ROC AUC overall, on AP and on PA films, and the mean share of
    Grad-CAM evidence on the marker's box of AP films, beside that box's share of the image
    (what a map that ignored it would put there on average)."""
    rows = {}
    for name, run in runs.items():
        run = Path(run)
        metrics = evaluate_run(run, split, n_boot=200, figures=False)
        pred = pd.read_csv(run / f"predictions_{split}.csv", dtype={"patientId": str})
        energy = marker_energy(run, split)
        size = int(Config.load(run / "config.json").image_size)
        _, _, w, h = marker_box(size)
        rows[name] = {
            "ROC AUC": metrics["roc_auc"],
            "AUC on AP": _view_auc(pred, "AP"),
            "AUC on PA": _view_auc(pred, "PA"),
            "evidence on marker (AP)": float(energy.marker_energy.mean()),
            "marker's share of image": w * h / size**2,
        }
    return pd.DataFrame.from_dict(rows, orient="index").round(3)
