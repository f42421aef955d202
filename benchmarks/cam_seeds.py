"""Notebook 05's figures over training seeds: where the demo run's maps point (the localisation
table) and the shortcut study (the clean run against the same run trained on films with a
"PORTABLE" marker, scored with and without it), seed by seed.

    python benchmarks/cam_seeds.py [--work DIR] [--seeds 0,1,2] [--results DIR]

On the notebooks' demo profile (`demo_config`, the data of `colab.DEMO_DATA`, as notebook 05),
each training seed trains the clean run (`study_seeds.seed_run`: WORK/runs/seedS/resnet18, so
a WORK shared with `benchmarks/study_seeds.py` reuses its main runs) and the
marker run (`cam.shortcut.shortcut_run`, under WORK/runs/seedS/). For each seed it prints
notebook 05's localisation table on val (CAM `layer4`, Grad-CAM `layer3` and `layer2`) and
`shortcut.shortcut_table` on test, then the mean ± sd of every cell over seeds; writes
WORK/cam_seeds.json and RESULTS/cam_seeds.json (`course.results`, default: the repository's
results/: both tables as mean ± sd, then per seed). Runs already trained in WORK are reused
(resume). Not a speed benchmark: training figures, quoted over seeds with their spread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
from study_seeds import seed_run  # this folder, on sys.path when run as a script

from pneumolib.cam import shortcut
from pneumolib.cam.localisation import localisation_table
from pneumolib.cam.run import cam_run
from pneumolib.course import colab
from pneumolib.course.results import make_table, script_command, write_results
from pneumolib.train.loop import fit

MAPS = {  # notebook 05's three rows: name -> (method, layer)
    "CAM layer4": ("cam", "layer4"),
    "Grad-CAM layer3": ("gradcam", "layer3"),
    "Grad-CAM layer2": ("gradcam", "layer2"),
}


def one_seed(work: Path, seed: int) -> dict[str, pd.DataFrame]:
    """Train (or reuse) the clean and the marker run with training seed `seed` -> notebook 05's
    two tables: "localisation" (numeric columns only) and "shortcut"."""
    cfg = seed_run(work, seed)
    fit(cfg, progress=False)  # a finished run does nothing
    summaries = {
        name: cam_run(
            cfg.out,
            "val",
            n_overlays=0,
            method=method,
            layer=layer,
            tag=f"seeds_{layer}",
            progress=False,
        )
        for name, (method, layer) in MAPS.items()
    }
    loc = localisation_table(summaries)
    marker_run = shortcut.shortcut_run(cfg, colab.DEMO_DATA, Path(cfg.out).parent)
    return {
        "localisation": loc[[c for c in loc.columns if not c.endswith("CI")]].astype(float),
        "shortcut": shortcut.shortcut_table(cfg.out, marker_run),
    }


def mean_sd(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each cell of the per-seed tables as "mean ± sd" over the seeds."""
    by_row = pd.concat(tables, names=["seed", "row"]).groupby(level="row", sort=False)
    mean, sd = by_row.mean().round(3), by_row.std(ddof=1).round(3)
    return mean.astype(str) + " ± " + sd.astype(str)


def results_tables(results: dict[int, dict[str, pd.DataFrame]]) -> dict[str, dict]:
    """The tables of results/cam_seeds.json: "localisation" and "shortcut" with every cell as
    [mean, sd] over seeds, then "<name>_per_seed" with one row per seed and table row."""
    label = {"localisation": "map", "shortcut": "model, films"}
    tables, per_seed_tables = {}, {}
    for name, first in label.items():
        per_seed = {seed: t[name] for seed, t in results.items()}
        by_row = pd.concat(per_seed, names=["seed", "row"]).groupby(level="row", sort=False)
        mean, sd = by_row.mean(), by_row.std(ddof=1)
        cols = list(mean.columns)
        rows = [
            {first: row} | {c: [mean.at[row, c], sd.at[row, c]] for c in cols} for row in mean.index
        ]
        formats = {c: "mean_sd:1" if c == "n" else "mean_sd:3" for c in cols}
        notes = f"Mean ± sd over {len(per_seed)} training seeds."
        if name == "localisation":
            notes += " A seed with no val true positive (n 0) has no score and is left out."
        tables[name] = make_table(rows, formats=formats, notes=notes)
        per_seed_rows = [
            {"seed": seed, first: row} | t.loc[row].to_dict()
            for seed, t in per_seed.items()
            for row in t.index
        ]
        per_seed_tables[f"{name}_per_seed"] = make_table(
            per_seed_rows, formats={c: "num:0" if c == "n" else "num:3" for c in cols}
        )
    return tables | per_seed_tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder (default: a temporary one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cam_seeds_"))
    results = {int(s): one_seed(work, int(s)) for s in args.seeds.split(",")}
    for name in ("localisation", "shortcut"):
        per_seed = {seed: tables[name] for seed, tables in results.items()}
        for seed, table in per_seed.items():
            print(f"\n{name}, seed {seed}\n{table.to_string()}")
        print(f"\n{name} over {len(per_seed)} seeds (mean ± sd)\n{mean_sd(per_seed).to_string()}")
    out = {
        str(seed): {name: t.to_dict(orient="index") for name, t in tables.items()}
        for seed, tables in results.items()
    }
    (work / "cam_seeds.json").write_text(json.dumps(out, indent=2))
    print(f"results: {work / 'cam_seeds.json'}")
    write_results(
        "cam_seeds",
        results_tables(results),
        command=script_command(__file__, argv),
        folder=args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
