"""Do two checkouts of pneumolib write the same files? Runs one small pipeline through the
command line in each (the same commands in the same folder, one after the other) and compares
every output file byte for byte; only what records the clock (creation times, seconds per
epoch) is set aside. The new checkout's pipeline starts from the old one's demo DICOMs (their
UIDs are random); its own demo DICOMs are compared by pixels and by every tag but the UIDs.

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
# what records the clock, or is a hash of a file that does (a checkpoint holds its cache's time)
CLOCK_KEYS = {"created", "creation_time", "seconds", "started", "finished", "elapsed_s"}
CLOCK_KEYS |= {"sha256", "checkpoint_sha256"}
CLOCK_LINES = ("training time", "sha256", "made by pneumolib")  # in MODEL_CARD.md


def run_pipeline(checkout: Path, work: Path, steps: list[list[str]]) -> float:
    """Every step in `work` with `checkout` first on the path -> seconds taken."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    for args in steps:
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


def _same_checkpoint(a: Path, b: Path) -> bool:
    import torch

    def equal(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, dict):
            keys = set(x) - CLOCK_KEYS
            return keys == set(y) - CLOCK_KEYS and all(equal(x[k], y[k]) for k in keys)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y, strict=True))
        return x == y

    return equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True))


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
        keep = [
            [ln for ln in f.read_text().splitlines() if not any(c in ln for c in CLOCK_LINES)]
            for f in (a, b)
        ]
        if keep[0] == keep[1]:
            return "same but the clock"
    if a.suffix == ".pt" and _same_checkpoint(a, b):
        return "same but the clock"
    return "DIFFERENT"


def same_dicoms(a: Path, b: Path) -> str:
    """Two folders of DICOMs: the same pixels and the same tags apart from the UIDs?"""
    import numpy as np
    import pydicom

    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return "DIFFERENT (file names)"
    for name in names:
        x, y = pydicom.dcmread(a / name), pydicom.dcmread(b / name)
        if not np.array_equal(x.pixel_array, y.pixel_array):
            return f"DIFFERENT (pixels of {name})"
        tags = {e.keyword: e.value for e in x if e.VR != "UI" and e.keyword != "PixelData"}
        if tags != {e.keyword: e.value for e in y if e.VR != "UI" and e.keyword != "PixelData"}:
            return f"DIFFERENT (tags of {name})"
    return "identical"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("same_outputs"))
    args = ap.parse_args()
    old, new, work = args.work / "old", args.work / "new", args.work / "work"
    for folder in (old, new, work):
        shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True)
    secs = {"old": run_pipeline(args.old, work, STEPS)}
    work.rename(old)
    shutil.copytree(old / "raw", work / "raw")  # the same DICOMs (their UIDs are random)
    secs["new"] = run_pipeline(args.new, work, [STEPS[0][:1] + ["raw_new"] + STEPS[0][2:]])
    secs["new"] += run_pipeline(args.new, work, STEPS[1:])
    work.rename(new)
    files = sorted(
        {p.relative_to(old) for p in old.rglob("*") if p.is_file()}
        | {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    )
    files = [f for f in files if "stage_2_train_images" not in f.parts and f.parts[0] != "raw_new"]
    files += [Path(f"raw_new/{p.name}") for p in sorted((new / "raw_new").iterdir()) if p.is_file()]
    files += [Path("raw_new/stage_2_train_images (all DICOMs)")]
    bad = 0
    for f in files:
        if f.name.endswith("(all DICOMs)"):
            dicoms = "stage_2_train_images"
            verdict = same_dicoms(old / "raw" / dicoms, new / "raw_new" / dicoms)
        elif f.parts[0] == "raw_new":  # the new checkout's demo data against the old one's
            verdict = same(old / "raw" / f.name, new / f)
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
