"""Catching a shortcut: the same patients with a "PORTABLE" marker burned into every AP film.

Real portable (AP) films carry such text, and AP films are far more often positive, so a
network can score the text instead of the lungs. Here the marker is planted so that reading it
pays (every positive AP film carries it, a quarter of the negative ones). `shortcut_run`
trains the demo's model on a copy of the demo data that differs only by the marker
(`synth.make_demo_data(..., shortcut=True)` draws the same phantoms, labels and split);
`shortcut_table` catches it: the marker model scored again with the marker removed, and the
share of its Grad-CAM evidence on the marker. Notebook 05 shows it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pneumolib.base.config import Config
from pneumolib.base.metrics import binary_metrics
from pneumolib.base.rundir import best_path, report_config
from pneumolib.cam.localisation import box_mask, energy_in_box
from pneumolib.cam.run import cam_examples
from pneumolib.data.labels import read_index
from pneumolib.data.preprocess import cache_for
from pneumolib.data.provenance import read_truth
from pneumolib.data.synth import make_demo_data, marker_box
from pneumolib.train.loop import fit

MARKER_LAYER = "layer4"  # where the shortcut's evidence is looked for


def shortcut_run(cfg: Config, data: dict, root: str | Path) -> Path:
    """Train `cfg` (the clean demo run's config) on the demo data `data` (make_demo_data's
    n, size, seed) remade with the AP marker, under ROOT/shortcut/; -> the run folder."""
    root = Path(root) / "shortcut"
    sc = cfg.replace(
        raw=str(root / "raw"), cache=str(root / "cache"), out=str(root / "runs" / "resnet18")
    )
    make_demo_data(sc.raw, **data, shortcut=True)
    cache_for(sc, progress=False)
    if not best_path(sc.out).is_file():
        fit(sc)
    return Path(sc.out)


def _scores(run: Path, cache: str | Path, index: pd.DataFrame) -> pd.DataFrame:
    """Per patient of `index`: view, target, prob and `marker_energy` (share of the Grad-CAM
    map inside the marker's box), for `run`'s model on the images of `cache`. The map is
    `layer4`'s, the decision layer: the text is read there (layer2, which localises opacities
    best on the demo, sees strokes too small to mean anything)."""
    ids = index.patientId.tolist()
    ex = cam_examples(run, ids, method="gradcam", layer=MARKER_LAYER, cache=cache)
    size = ex["maps"].shape[-1]
    box = [[marker_box(size)]] * len(index)
    inside = box_mask(box[0], size, size)
    return index[["patientId", "view"]].assign(
        target=ex["targets"],
        prob=ex["probs"],
        marker_energy=energy_in_box(ex["maps"], box),
        marker_peak=ex["maps"][:, inside].max(axis=1),  # 1: the strongest evidence is there
    )


def _auc(df: pd.DataFrame) -> float:
    """ROC AUC of a scores table (NaN with one class), as `metrics` defines it."""
    return binary_metrics(df.target, df.prob)["roc_auc"]


def shortcut_table(
    clean_run: str | Path, shortcut_run: str | Path, split: str = "test"
) -> pd.DataFrame:
    """Catch the shortcut: one row per (model, films) on `split`. The clean model on clean
    films, the marker model on films with the marker, and the marker model on the same films
    with the marker removed (the clean cache: same patients, same pixels otherwise). Columns:
    ROC AUC overall, on AP and on PA films; on the films that carry the marker (or would):
    the map's largest value inside the marker's box (maps run 0-1: 1 means the strongest
    evidence lies on the text) and the mean share of the map's evidence there, beside the
    box's share of the image (what a map that ignored it would put there)."""
    clean_run, shortcut_run = Path(clean_run), Path(shortcut_run)
    # as trained (best.pt's config), not as config.json may say after an edit
    trained = {run: report_config(run).config for run in (clean_run, shortcut_run)}
    clean_cache, marker_cache = trained[clean_run].cache, trained[shortcut_run].cache
    truth = read_truth(trained[shortcut_run].raw)[["patientId", "marker"]]
    index = read_index(clean_cache)
    index = index[index.split == split].reset_index(drop=True)
    marked = set(truth.patientId[truth.marker.astype(bool)])
    cases = {
        "clean model, clean films": (clean_run, clean_cache),
        "marker model, films with marker": (shortcut_run, marker_cache),
        "marker model, marker removed": (shortcut_run, clean_cache),
    }
    rows = {}
    for name, (run, cache) in cases.items():
        df = _scores(run, cache, index)
        on = df.patientId.isin(marked)
        size = int(trained[run].image_size)
        _, _, w, h = marker_box(size)
        rows[name] = {
            "ROC AUC": _auc(df),
            "AUC on AP": _auc(df[df.view == "AP"]),
            "AUC on PA": _auc(df[df.view == "PA"]),
            "map on marker (max)": float(df.marker_peak[on].mean()),
            "evidence on marker": float(df.marker_energy[on].mean()),
            "marker's share of image": w * h / size**2,
        }
    return pd.DataFrame.from_dict(rows, orient="index").round(3)
