"""Notebook 03's study over training seeds: the three transfer modes, and the binary head against
its three-class twin, each compared on the same test patients, seed by seed.

    python benchmarks/study_seeds.py [--work DIR] [--seeds 0,1,2] [--n-boot 1000] [--results DIR]

On the notebooks' demo profile (the same data, cache and runs as notebook 03:
`colab.study_runs`, one cache for all seeds), each training seed trains every run, evaluates it
on val and test, and compares on test (`compare.compare_runs`: paired bootstrap CI of each AUC
difference, DeLong's p) the three modes with each other and the main run with its three-class
twin. Prints one row per seed and pair, then per run and pair the mean and standard deviation
over seeds and in how many seeds the paired interval excludes 0; writes WORK/results.json and
the tables `modes`, `pairs` and `per_seed` to RESULTS/study_seeds.json (`course.results`;
default: the repository's results/). Runs already trained in WORK are reused (resume). Not a
speed benchmark: a training figure, quoted over seeds with its spread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pneumolib.base.config import Config, demo_config
from pneumolib.course import colab
from pneumolib.course.results import make_table, script_command, write_results
from pneumolib.evaluate.compare import compare_runs
from pneumolib.evaluate.run import evaluate_run
from pneumolib.train.loop import fit

MODES = ("scratch", "finetune", "feature-extraction")
# How the tables name the runs; the tasks study's pair names its binary run "binary (scratch)".
LABELS = {"finetune": "fine-tuning", "feature-extraction": "feature extraction"}


def seed_run(work: Path, seed: int) -> Config:
    """The notebooks' main run with training seed `seed`, in WORK/runs/seedS/resnet18, on the
    notebooks' demo cache in WORK (made here if missing; its split is the preset's, seed 0).
    `cam_seeds.py` trains the same folders, so the two can share a WORK."""
    base = demo_config(work)
    colab.ensure_cache(base, "demo")
    return base.replace(seed=seed, out=str(work / "runs" / f"seed{seed}" / "resnet18"))


def one_seed(work: Path, seed: int, *, n_boot: int) -> tuple[list[dict], list[dict]]:
    """Train and evaluate notebook 03's runs with training seed `seed` -> (one row per run with
    its test AUC, one row per compared pair)."""
    cfg = seed_run(work, seed)
    runs = colab.study_runs(cfg, "demo", work)  # every run inherits the seed from cfg
    for c in runs.values():
        fit(c, progress=False)
        for split in ("val", "test"):
            evaluate_run(c.out, split, n_boot=n_boot, figures=False, print_table=False)
    folder = {Path(c.out).name: name for name, c in runs.items()}
    pairs, aucs = [], {}
    for study, names in (("modes", MODES), ("tasks", ("scratch", "three-class"))):
        result = compare_runs([runs[n].out for n in names], "test", n_boot=n_boot)
        for r in result["runs"].itertuples():
            aucs[folder[r.run]] = r.roc_auc
        for r in result["pairs"].itertuples():
            a, b = (LABELS.get(folder[x], folder[x]) for x in (r.a, r.b))
            pairs.append(
                {
                    "seed": seed,
                    "study": study,
                    "pair": f"{'binary (scratch)' if study == 'tasks' else a} − {b}",
                    "diff": r.roc_auc_diff,
                    "lo": r.roc_auc_diff_lo,
                    "hi": r.roc_auc_diff_hi,
                    "delong_p": r.delong_p,
                }
            )
    runs = [{"seed": seed, "run": LABELS.get(n, n), "auc": float(a)} for n, a in aucs.items()]
    return runs, pairs


def summary_text(runs: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """Markdown: per seed and pair, then mean ± sd over seeds and the seeds whose CI excludes 0."""
    lines = [
        "| seed | pair | AUC difference [paired 95% CI] | DeLong p |",
        "| --- | --- | --- | --- |",
    ]
    for r in pairs.itertuples():
        lines.append(
            f"| {r.seed} | {r.pair} | {r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] | {r.delong_p:.3g} |"
        )
    n = runs["seed"].nunique()
    lines += ["", f"Over {n} seeds (mean ± sd):", "", "| run | test AUC |", "| --- | --- |"]
    for name, g in runs.groupby("run", sort=False):
        lines.append(f"| {name} | {g.auc.mean():.3f} ± {g.auc.std(ddof=1):.3f} |")
    lines += ["", "| pair | AUC difference | seeds whose CI excludes 0 |", "| --- | --- | --- |"]
    for name, g in pairs.groupby("pair", sort=False):
        excl = int(((g.lo > 0) | (g.hi < 0)).sum())
        lines.append(f"| {name} | {g['diff'].mean():+.3f} ± {g['diff'].std(ddof=1):.3f} "
                     f"| {excl} of {len(g)} |")  # fmt: skip
    return "\n".join(lines)


def results_tables(runs: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, dict]:
    """The tables of results/study_seeds.json: test AUC per run and the paired differences, as
    mean ± sd over seeds, then every seed's pair with its paired CI and DeLong p."""
    seeds = sorted(runs["seed"].unique().tolist())
    by_run = []
    for name, g in runs.groupby("run", sort=False):
        auc = dict(zip(g.seed, g.auc, strict=True))
        by_run.append(
            {"run": name, "test AUC": [g.auc.mean(), g.auc.std(ddof=1)]}
            | {f"seed {s}": auc.get(s) for s in seeds}
        )
    by_pair = []
    for name, g in pairs.groupby("pair", sort=False):
        excl = int(((g.lo > 0) | (g.hi < 0)).sum())
        by_pair.append(
            {
                "pair": name,
                "AUC difference": [g["diff"].mean(), g["diff"].std(ddof=1)],
                "seeds whose CI excludes 0": f"{excl} of {len(g)}",
                "lowest DeLong p": g.delong_p.min(),
                "highest DeLong p": g.delong_p.max(),
            }
        )
    per_seed = [
        {"seed": r.seed, "pair": r.pair, "AUC difference [paired 95% CI]": [r.diff, r.lo, r.hi]}
        | {"DeLong p": r.delong_p}
        for r in pairs.itertuples()
    ]
    return {
        "modes": make_table(
            by_run,
            formats={"test AUC": "mean_sd:3"} | {f"seed {s}": "num:3" for s in seeds},
            notes="Test AUC over training seeds (mean ± sd), then each seed's.",
        ),
        "pairs": make_table(
            by_pair,
            formats={
                "AUC difference": "+mean_sd:3",
                "lowest DeLong p": "num:4",
                "highest DeLong p": "num:4",
            },
            notes="A difference counts where its paired 95% CI excludes 0 in most seeds.",
        ),
        "per_seed": make_table(
            per_seed,
            formats={"AUC difference [paired 95% CI]": "+ci:3", "DeLong p": "num:4"},
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder (default: a temporary one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="study_seeds_"))
    all_runs, all_pairs = [], []
    for s in args.seeds.split(","):
        runs, pairs = one_seed(work, int(s), n_boot=args.n_boot)
        all_runs += runs
        all_pairs += pairs
    runs, pairs = pd.DataFrame(all_runs), pd.DataFrame(all_pairs)
    print(summary_text(runs, pairs))
    out = {"runs": all_runs, "pairs": all_pairs, "seeds": sorted(runs["seed"].unique().tolist())}
    (work / "results.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"results: {work / 'results.json'}")
    write_results(
        "study_seeds",
        results_tables(runs, pairs),
        command=script_command(__file__, argv),
        folder=args.results,
    )
    return 0 if np.isfinite(runs["auc"]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
