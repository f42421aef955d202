"""Notebook 07's question over training seeds: how far boxes from a classifier's maps get on
the challenge's metric, and what box labels add. Three routes on the demo, seed by seed:

1. CAM boxes: the notebooks' main classifier run (`study_seeds.seed_run`), its box rule fitted
   on val by `cam` (`cam.boxes`), applied to test;
2. the detector: FCOS on a ResNet18-FPN (`pneumolib.detect`) started from that classifier's
   backbone, trained on the expert boxes for DETECT_EPOCHS epochs;
3. the detector gated by the classifier (its boxes kept only where the calibrated classifier
   calls the image positive at its val-chosen youden point).

    python benchmarks/detect_seeds.py [--work DIR] [--seeds 0,1,2] [--results DIR]

For each seed it prints each route's test rsna_map with its 95% CI over patients, and the
paired differences (detector - CAM boxes, gated - detector) on the same patients and the same
bootstrap resamples; then the mean ± sd over seeds. Writes RESULTS/detect_seeds.json
(`course.results`, default: the repository's results/). Runs already trained in WORK are reused
(resume). Not a speed benchmark: training figures, quoted over seeds with their spread.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from study_seeds import seed_run  # this folder, on sys.path when run as a script

from pneumolib.cam.run import cam_run
from pneumolib.course.results import make_table, script_command, write_results
from pneumolib.detect.evaluate import evaluate_detector
from pneumolib.detect.loop import fit_detector
from pneumolib.evaluate.compare import compare_boxes
from pneumolib.evaluate.run import evaluate_run
from pneumolib.train.loop import fit

DETECT_EPOCHS = 4  # what about five minutes buys on 2 CPU cores at the demo's 128 px
DETECT_BATCH = 8  # small batches: more steps in those epochs (a detector learns from steps)
ROUTES = ("CAM boxes", "detector", "detector + gate")


def one_seed(work: Path, seed: int, *, n_boot: int) -> list[dict]:
    """Train (or reuse) the classifier and the detector of training seed `seed` -> one row per
    route and one per paired difference: rsna_map, CI low, CI high, images."""
    cfg = seed_run(work, seed)
    fit(cfg, progress=False)
    for split in ("val", "test"):  # the calibration (box confidences, the gate's risk)
        evaluate_run(cfg.out, split, n_boot=n_boot, figures=False, print_table=False)
    cam_run(cfg.out, "test", n_overlays=0, n_boot=n_boot, progress=False)
    det = Path(cfg.out).parent / "detector"
    start = {"weights": str(cfg.out), "mode": "finetune"}  # the classifier's backbone
    det_cfg = cfg.replace(out=str(det), epochs=DETECT_EPOCHS, batch_size=DETECT_BATCH, **start)
    fit_detector(det_cfg, progress=False)
    m = evaluate_detector(det, "test", gate=cfg.out, n_boot=n_boot)
    versus = compare_boxes([det, cfg.out], "test", n_boot=n_boot)["box_pairs"].iloc[0]
    rows = []
    for route, s in zip(ROUTES, (None, m["rsna_map"], m["rsna_map_gated"]), strict=True):
        if s is None:
            runs = compare_boxes([cfg.out, det], "test", n_boot=n_boot)["box_runs"].iloc[0]
            s = {"value": runs["rsna_map"], "ci": [runs["rsna_map_lo"], runs["rsna_map_hi"]],
                 "n_images": runs["n_images"]}  # fmt: skip
        rows.append(_row(seed, route, s["value"], s["ci"], s["n_images"]))
    rows.append(_row(seed, "detector - CAM boxes", versus["rsna_map_diff"],
                     [versus["rsna_map_diff_lo"], versus["rsna_map_diff_hi"]], None))  # fmt: skip
    g = m["gate_difference"]
    rows.append(_row(seed, "gated - detector", g["value"], g["ci"], None))
    return rows


def _row(seed: int, route: str, value: float, ci: list, n: int | None) -> dict:
    return {"seed": seed, "route": route, "rsna_map": float(value), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "n_images": n}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder (default: a temporary one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="detect_seeds_"))
    rows = [r for s in args.seeds.split(",") for r in one_seed(work, int(s), n_boot=args.n_boot)]
    per_seed = pd.DataFrame(rows)
    print(per_seed.to_string(index=False))
    by = per_seed.groupby("route", sort=False)["rsna_map"]
    summary = pd.DataFrame({"mean": by.mean(), "sd": by.std(ddof=1), "seeds": by.size()})
    print(f"\ntest rsna_map over seeds\n{summary.round(3).to_string()}")
    tables = {
        "routes": make_table(
            [
                {"route": r, "rsna_map": [summary.at[r, "mean"], summary.at[r, "sd"]]}
                for r in summary.index
            ],  # fmt: skip
            formats={"rsna_map": "mean_sd:3"},
            notes=f"Test rsna_map, mean ± sd over {len(args.seeds.split(','))} training seeds; "
            "the differences are paired, on the same patients and bootstrap resamples.",
        ),
        "per_seed": make_table(
            per_seed.to_dict("records"),
            formats={c: "num:3" for c in ("rsna_map", "ci_low", "ci_high")},
        ),
    }
    write_results("detect_seeds", tables, command=script_command(__file__, argv),
                  folder=args.results)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
