"""Loader throughput: pneumolib's batch pipeline against the course's per-sample pipeline.

Both deliver what the network eats: augmented, normalised float32 tensors (64, 1, 224, 224)
on the CPU, from the same N cached radiographs, with 2 loader workers each.

* package: `loader.make_loader` (whole uint8 batches from the memory-mapped cache, one cv2 affine
  warp per image in the workers) + `runtime.to_device_batch` (contrast/brightness, normalise);
* course: torchvision `DatasetFolder` over one float16 .npy per image (S x S, in class
  folders), per sample `ToTensor`, `Normalize`, `RandomAffine(degrees=5, translate=(0.05,
  0.05), scale=(0.9, 1.1))`, `RandomResizedCrop(224, scale=(0.35, 1))`.

Usage: python benchmarks/loader.py [--n 2000] [--size 256] [--out-size 224] [--images 4096]
       [--repeat 2] [--work DIR] [--cache CACHE] [--results DIR]

Without --cache it makes N synthetic radiographs and their cache in --work (a temporary folder
unless given; a given one is reused on the next run). The first batches of each pipeline
(worker start-up, page cache) are excluded from the timing; the two pipelines are measured in
turn `--repeat` times and the best of each is reported, as other load only ever slows a run.
Writes RESULTS/loader.json (`course.results`, default: the repository's results/): the best of
each against the other with the ratio, every run, and the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from torchvision.datasets import DatasetFolder

from pneumolib.base.config import Config
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.loader import make_loader
from pneumolib.core.runtime import to_device_batch
from pneumolib.course.results import load_average, make_table, script_command, write_results
from pneumolib.data.labels import open_images, read_index, read_stats
from pneumolib.data.preprocess import build_cache
from pneumolib.data.synth import make_demo_data

BATCH, WORKERS = 64, 2


def demo_cache(work: Path, n: int, size: int) -> Path:
    """A cache of `n` synthetic radiographs of `size` px in `work` (reused when present)."""
    raw = make_demo_data(work / f"raw_{n}_{size}", n=n, size=size, seed=0)
    return build_cache(raw, work / f"cache_{n}_{size}", size=size, workers=2, progress=False)


def forever(loader: torch.utils.data.DataLoader) -> Iterator:
    """Batches over epoch after epoch (the package's sampler reshuffles per epoch)."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure(batches: Iterator[torch.Tensor], out_size: int, images: int, warmup: int = 8) -> float:
    """Images per second over at least `images` images after `warmup` batches (worker start-up
    and the batches queued meanwhile are not timed); closes `batches`, stopping its workers."""
    try:
        for _ in range(warmup):
            x = next(batches)
            assert x.shape == (BATCH, 1, out_size, out_size) and x.dtype == torch.float32, x.shape
        seen, t0 = 0, time.perf_counter()
        while seen < images:
            seen += len(next(batches))
        return seen / (time.perf_counter() - t0)
    finally:
        batches.close()


def package_batches(cache: Path, n: int, out_size: int, policy: AugmentPolicy) -> Iterator:
    index = read_index(cache).head(n)
    stats = read_stats(cache)
    normalise = (stats.mean, stats.std)
    loader = make_loader(
        cache,
        index,
        batch_size=BATCH,
        out_size=out_size,
        policy=policy,
        train=True,
        seed=0,
        workers=WORKERS,
        normalise=normalise,
    )
    cpu = torch.device("cpu")
    for batch in forever(loader):
        yield to_device_batch(
            batch,
            cpu,
            size=out_size,
            policy=policy,
            stats=stats,
            train=True,
            seed=0,
            channels_last=False,
        )


def load_npy(path: str) -> np.ndarray:
    return np.load(path).astype(np.float32)  # as the course: float16 on disk, float32 to torch


def write_npy_folders(cache: Path, n: int, root: Path) -> Path:
    """The course's preprocessed layout: ROOT/<target>/<patientId>.npy, float16 in [0, 1]."""
    index, images = read_index(cache).head(n), open_images(cache)
    done = root / "done"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for t in (0, 1):
        (root / str(t)).mkdir(parents=True)
    for pid, row, target in zip(index.patientId, index.row, index.target, strict=True):
        np.save(root / str(target) / f"{pid}.npy", (images[row] / 255.0).astype(np.float16))
    done.touch()
    return root


def course_batches(root: Path, out_size: int, mean: float, std: float) -> Iterator:
    transform = T.Compose(
        [
            T.ToTensor(),
            T.Normalize(mean, std),
            T.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            T.RandomResizedCrop(out_size, scale=(0.35, 1)),
        ]
    )
    ds = DatasetFolder(str(root), loader=load_npy, extensions=(".npy",), transform=transform)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True
    )
    for x, _ in forever(loader):
        yield x


def results_tables(*, setting: str, pkg: list[float], course: list[float]) -> dict[str, dict]:
    """The tables of results/loader.json: the best of each pipeline with the ratio, every run."""
    summary = {
        "benchmark": f"loader: {setting}",
        "package img/s": max(pkg),
        "baseline img/s": max(course),
        "ratio": max(pkg) / max(course),
    }
    runs = [
        {"run": i + 1, "package img/s": a, "course img/s": b, "ratio": a / b}
        for i, (a, b) in enumerate(zip(pkg, course, strict=True))
    ]
    return {
        "summary": make_table(
            [summary],
            formats={"package img/s": "num:0", "baseline img/s": "num:0", "ratio": "ratio"},
            notes="Best of the runs of each pipeline (other load only slows a run); the "
            "baseline is the course's per-sample torchvision pipeline.",
        ),
        "runs": make_table(
            runs, formats={"package img/s": "num:0", "course img/s": "num:0", "ratio": "ratio"}
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images in the cache")
    ap.add_argument("--size", type=int, default=256, help="cache side, px")
    ap.add_argument("--out-size", type=int, default=224, help="network input side, px")
    ap.add_argument("--images", type=int, default=4096, help="images timed per pipeline")
    ap.add_argument("--repeat", type=int, default=2, help="measurements per pipeline (best)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data (default: temp)")
    ap.add_argument("--cache", type=Path, default=None, help="use this cache instead")
    ap.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = ap.parse_args(argv)

    tmp = None
    work = args.work or Path(tmp := tempfile.mkdtemp(prefix="pneumolib_bench_"))
    try:
        cache = args.cache or demo_cache(work, args.n, args.size)
        n = min(args.n, len(read_index(cache)))
        stats = read_stats(cache)
        policy = AugmentPolicy.from_config(Config())  # the course policy
        out = args.out_size
        # Workers run 1 thread each; the consumer's work is elementwise, and on a CPU this
        # small more threads there only contend with the 2 workers. Same for both pipelines.
        torch.set_num_threads(1)
        load0 = load_average()  # as timing starts (making the cache is not timed)
        print(
            f"{n} images of {stats.size} px -> ({BATCH}, 1, {args.out_size}, "
            f"{args.out_size}) float32, {WORKERS} workers each, {os.cpu_count()} cores, "
            f"torch {torch.__version__}; load average {load0[0]:.1f}"
        )

        root = write_npy_folders(cache, n, work / f"npy_{n}_{stats.size}")
        pkg, course = [], []
        for r in range(args.repeat):  # alternate, so a burst of other load hits both pipelines
            pkg.append(measure(package_batches(cache, n, out, policy), out, args.images))
            batches = course_batches(root, out, stats.mean, stats.std)
            course.append(measure(batches, out, args.images))
            print(f"run {r + 1}: package {pkg[-1]:,.0f} img/s, course {course[-1]:,.0f} img/s")
        best_pkg, best_course = max(pkg), max(course)  # best of: the least disturbed run
        print(f"load average after: {os.getloadavg()[0]:.1f} (other work slows both pipelines)")
        print(
            f"loader: package {best_pkg:,.0f} img/s, course {best_course:,.0f} img/s, "
            f"ratio {best_pkg / best_course:.1f}x"
        )
        setting = (
            f"augmented, normalised ({BATCH}, 1, {out}, {out}) float32 batches from {n:,} "
            f"cached images of {stats.size} px, {WORKERS} workers each"
        )
        write_results(
            "loader",
            results_tables(setting=setting, pkg=pkg, course=course),
            command=script_command(__file__, argv),
            folder=args.results,
            load_avg=load0,
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
