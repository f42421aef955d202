"""Binary head vs three-class head, over seeds: does RSNA's finer label help the pneumonia AUC?

    python benchmarks/task_seeds.py [--work DIR] [--seeds 0,1,2] [--epochs N] [--n-boot 1000]

On the notebooks' demo profile (the same data, cache and Config as notebooks 03-04: scratch,
20 epochs, 128 px), each seed trains the binary run and its three-class twin
(`colab.three_class_run`: only the head and the loss differ), evaluates both on val and test,
and compares them on the same test patients (`compare.compare_runs`: paired bootstrap CI of
the AUC difference, DeLong's p). Prints one row per seed and the mean and standard deviation
over seeds; writes WORK/results.json. Runs already trained in WORK are reused (resume).
Not a speed benchmark: a training figure, quoted over seeds with its spread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pneumolib import colab
from pneumolib.compare import compare_runs
from pneumolib.config import demo_config
from pneumolib.evaluate import evaluate_run
from pneumolib.train import fit


def one_seed(work: Path, seed: int, *, epochs: int | None, n_boot: int) -> dict:
    """Train and evaluate both heads with training seed `seed` (one cache for all seeds) -> the
    test AUCs and their paired difference."""
    base = demo_config(work)
    colab.ensure_cache(base, "demo")  # the notebooks' cache (its split is the preset's, seed 0)
    cfg = base.replace(seed=seed, out=str(work / "runs" / f"seed{seed}" / "resnet18"))
    if epochs:
        cfg = cfg.replace(epochs=epochs)
    runs = {"binary": cfg, "three-class": colab.three_class_run(cfg)}
    for c in runs.values():
        fit(c, progress=False)
        for split in ("val", "test"):
            evaluate_run(c.out, split, n_boot=n_boot, figures=False, print_table=False)
    result = compare_runs([runs["binary"].out, runs["three-class"].out], "test", n_boot=n_boot)
    auc = dict(zip(("binary", "three-class"), result["runs"]["roc_auc"], strict=True))
    pair = result["pairs"].iloc[0]
    return {
        "seed": seed,
        "n_test": int(result["runs"]["n"].iloc[0]),
        "auc_binary": float(auc["binary"]),
        "auc_three_class": float(auc["three-class"]),
        "diff": float(pair["roc_auc_diff"]),
        "diff_ci": [float(pair["roc_auc_diff_lo"]), float(pair["roc_auc_diff_hi"])],
        "delong_p": float(pair["delong_p"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder (default: a temporary one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo preset's")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="task_seeds_"))
    rows = [
        one_seed(work, int(s), epochs=args.epochs, n_boot=args.n_boot)
        for s in args.seeds.split(",")
    ]
    print("| seed | test n | AUC binary | AUC three-class | difference [95% CI] | DeLong p |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lo, hi = r["diff_ci"]
        print(
            f"| {r['seed']} | {r['n_test']} | {r['auc_binary']:.3f} | {r['auc_three_class']:.3f} "
            f"| {r['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['delong_p']:.3g} |"
        )
    summary = {}
    for key in ("auc_binary", "auc_three_class", "diff"):
        v = np.array([r[key] for r in rows])
        summary[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    print(
        f"over {len(rows)} seeds (mean ± sd): binary {summary['auc_binary']['mean']:.3f} ± "
        f"{summary['auc_binary']['sd']:.3f}, three-class {summary['auc_three_class']['mean']:.3f}"
        f" ± {summary['auc_three_class']['sd']:.3f}, difference {summary['diff']['mean']:+.3f} ± "
        f"{summary['diff']['sd']:.3f}"
    )
    (work / "results.json").write_text(json.dumps({"seeds": rows, "summary": summary}, indent=2))
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
