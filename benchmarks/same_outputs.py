"""Do two checkouts of pneumolib write the same files? Runs one small pipeline through the
command line in each (the same commands, the same relative paths) and compares every output
file byte for byte; only what records the clock (creation times, seconds per epoch) is set aside.

    python benchmarks/same_outputs.py --old ../old-checkout --new . --work /tmp/same

A refactoring that keeps the rules must print "identical" for every file. Each checkout runs
with PYTHONPATH pointing at it, so neither needs installing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = [  # (the command's arguments, what it may print that is not compared)
    ["make-demo-data", "raw", "--n", "80", "--size", "256", "--seed", "0"],
    ["preprocess", "--raw", "raw", "--out", "cache", "--size", "64", "--workers", "1"],
    [
        "train",
        "--cache",
        "cache",
        "--out",
        "run",
        "--mode",
        "scratch",
        "--weights",
        "none",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--image-size",
        "48",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--seed",
        "0",
        "--max-steps-per-epoch",
        "3",
    ],
    ["evaluate", "--run", "run", "--split", "val"],
    ["evaluate", "--run", "run", "--split", "test"],
    ["cam", "--run", "run", "--split", "test", "--n", "4"],
    ["card", "--run", "run"],
    ["predict", "--checkpoint", "run/best.pt", "--out", "predict.csv", "raw/stage_2_train_images"],
]
CLOCK_KEYS = {"created", "creation_time", "seconds", "started", "finished", "elapsed_s"}


def run_pipeline(checkout: Path, work: Path) -> float:
    """Every step in `work` with `checkout` first on the path -> seconds taken."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    for args in STEPS:
        res = subprocess.run(
            [sys.executable, "-m", "pneumolib", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SystemExit(f"{checkout}: `{' '.join(args)}` failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def _strip_clock(obj):
    if isinstance(obj, dict):
        return {k: _strip_clock(v) for k, v in obj.items() if k not in CLOCK_KEYS}
    if isinstance(obj, list):
        return [_strip_clock(v) for v in obj]
    return obj


def same(a: Path, b: Path) -> str:
    """ "identical", "same but the clock", or what differs."""
    if a.read_bytes() == b.read_bytes():
        return "identical"
    if a.suffix == ".json":
        if _strip_clock(json.loads(a.read_text())) == _strip_clock(json.loads(b.read_text())):
            return "same but the clock"
    if a.name == "metrics.csv":
        import pandas as pd

        x, y = pd.read_csv(a).drop(columns="seconds"), pd.read_csv(b).drop(columns="seconds")
        if x.equals(y):
            return "same but the clock"
    if a.suffix == ".md":
        strip = [ln for ln in a.read_text().splitlines() if "training time" not in ln]
        other = [ln for ln in b.read_text().splitlines() if "training time" not in ln]
        if strip == other:
            return "same but the clock"
    return "DIFFERENT"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("same_outputs"))
    args = ap.parse_args()
    secs = {side: run_pipeline(getattr(args, side), args.work / side) for side in ("old", "new")}
    old, new = args.work / "old", args.work / "new"
    files = sorted(
        {p.relative_to(old) for p in old.rglob("*") if p.is_file()}
        | {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    )
    files = [f for f in files if "stage_2_train_images" not in f.parts] + [
        Path("raw/stage_2_train_images (all DICOMs)")
    ]
    bad = 0
    for f in files:
        if f.name.endswith("(all DICOMs)"):
            a = sorted((old / "raw/stage_2_train_images").iterdir())
            b = sorted((new / "raw/stage_2_train_images").iterdir())
            verdict = (
                "identical"
                if [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
                else "DIFFERENT"
            )
        elif not (old / f).exists() or not (new / f).exists():
            verdict = "only in " + ("new" if not (old / f).exists() else "old")
        else:
            verdict = same(old / f, new / f)
        bad += verdict not in ("identical", "same but the clock")
        print(f"{verdict:20s} {f}")
    print(f"{len(files)} files; {bad} differ; old {secs['old']:.0f} s, new {secs['new']:.0f} s")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
