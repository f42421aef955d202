"""Training-step throughput: the whole input pipeline against the model alone.

* pipeline: `loader.make_loader` -> `runtime.to_device_batch` -> forward, backward, optimiser step,
  exactly as `train.fit` runs them (AMP and channels_last on CUDA, the augmentation warp on the
  GPU there and in the loader workers on a CPU);
* model only: the same model, optimiser and batch size on one batch already on the device.

efficiency = pipeline / model only: 1.0 means the input pipeline costs nothing.

Usage: python benchmarks/train_step.py [--size 224] [--batch 256] [--steps 30]
       [--device auto|cpu|cuda] [--n N] [--workers -1] [--work DIR] [--cache CACHE]
       [--model resnet18] [--compile] [--results DIR]
Defaults on CUDA: --size 224 --batch 256 --steps 30; on a CPU (small, minutes):
--size 128 --batch 16 --steps 5. `--size 224 --batch 16 --steps 5` runs on 2 CPU cores in a
couple of minutes. `--compile` wraps the model in `torch.compile` for both measurements (the
warm-up steps absorb the compilation). On CUDA the run also prints the peak GPU memory
(`torch.cuda.max_memory_allocated`) over all its steps. Writes RESULTS/train_step.json
(`course.results`, default: the repository's results/): both rates and the efficiency, the
setting, and the load average at the start.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pneumolib.base.config import Config, default_workers
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.loader import make_loader
from pneumolib.core.models import build_model, trainable_parameters
from pneumolib.core.runtime import amp_dtype, resolve_device, to_device_batch
from pneumolib.course.results import load_average, make_table, script_command, write_results
from pneumolib.data.labels import read_index, read_stats
from pneumolib.train.setup import accumulate_gradients, make_optimizer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import demo_cache, forever  # noqa: E402  (the sibling benchmark script)

DEFAULTS = {
    "cuda": {"size": 224, "batch": 256, "steps": 30},
    "cpu": {"size": 128, "batch": 16, "steps": 5},
}


def timed(step: Callable[[], int], steps: int, warmup: int, device: torch.device) -> float:
    """Images per second over `steps` calls of `step` (each returns its batch size)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seen, t0 = 0, time.perf_counter()
    for _ in range(steps):
        seen += step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - t0)


def results_tables(
    *, benchmark: str, pipeline: float, model_only: float, setting: dict
) -> dict[str, dict]:
    """The tables of results/train_step.json: both rates with the efficiency, and the setting."""
    summary = {
        "benchmark": benchmark,
        "package img/s": pipeline,
        "baseline img/s": model_only,
        "ratio": pipeline / model_only,
    }
    return {
        "summary": make_table(
            [summary],
            formats={"package img/s": "num:1", "baseline img/s": "num:1", "ratio": "ratio"},
            notes="package: the whole input pipeline and the step; baseline: the model alone on "
            "a batch already on the device; the ratio is the efficiency (1.00: the pipeline "
            "costs nothing).",
        ),
        "setting": make_table([{"setting": k, "value": v} for k, v in setting.items()]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="network input side, px")
    ap.add_argument("--batch", type=int, default=None, help="images per optimiser step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (CUDA 10, CPU 2)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument(
        "--n",
        type=int,
        default=None,
        help="images in the cache (default: 2000 on CUDA, what the steps need on a CPU)",
    )
    ap.add_argument("--cache-size", type=int, default=256, help="cache side, px")
    ap.add_argument("--workers", type=int, default=-1, help="loader workers (-1: one per core)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data (default: temp)")
    ap.add_argument("--cache", type=Path, default=None, help="use this cache instead")
    ap.add_argument("--model", default="resnet18", help="torchvision architecture name")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    d = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    size, batch, steps = (
        args.size or d["size"],
        args.batch or d["batch"],
        args.steps or d["steps"],
    )
    # On CUDA the warm-up also drains the batches the workers queued while starting up.
    warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 2)
    cuda = device.type == "cuda"
    cfg = Config(image_size=size, batch_size=batch, device=str(device))
    seed_everything(0)

    tmp = None
    work = args.work or Path(tmp := tempfile.mkdtemp(prefix="pneumolib_bench_"))
    try:
        n = args.n or (2000 if cuda else max(256, batch * (steps + warmup + 2)))
        cache = args.cache or demo_cache(work, n, args.cache_size)
        index, stats = read_index(cache).head(n), read_stats(cache)
        policy = AugmentPolicy.from_config(cfg)
        gpu_warp = cuda and cfg.gpu_augment
        workers = default_workers(args.workers, cap=8)  # as make_loader resolves it
        normalise = None if cuda else (stats.mean, stats.std)  # as train.fit does
        loader = make_loader(
            cache,
            index,
            batch_size=batch,
            out_size=size,
            policy=policy,
            train=True,
            seed=0,
            workers=workers,
            warp_in_worker=not gpu_warp,
            pin_memory=cuda,
            normalise=normalise,
        )

        model = build_model(args.model, "finetune", "none").to(device)
        channels_last = cuda and cfg.channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(trainable_parameters(model), cfg)
        net = torch.compile(model) if args.compile else model  # as train.fit does
        dtype = amp_dtype(device, cfg.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        pw = torch.tensor([3.0], device=device)

        def train_step(x: torch.Tensor, y: torch.Tensor) -> int:
            opt.zero_grad(set_to_none=True)
            accumulate_gradients(
                net, [(x, y)], n_step=len(y), loss_weight=pw, scaler=scaler, dtype=dtype
            )
            scaler.step(opt)
            scaler.update()
            return len(y)

        full = (b for b in forever(loader) if len(b["target"]) == batch)  # no ragged last batch

        def pipeline_step() -> int:
            b = next(full)
            x = to_device_batch(
                b,
                device,
                size=size,
                policy=policy,
                stats=stats,
                train=True,
                seed=0,
                channels_last=channels_last,
            )
            return train_step(x, b["target"].to(device, non_blocking=True))

        x0 = torch.randn(batch, 1, size, size, device=device)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y0 = (torch.rand(batch, device=device) < 0.25).float()

        name = (
            torch.cuda.get_device_name(device)
            if cuda
            else f"CPU, {torch.get_num_threads()} threads"
        )
        load0 = load_average()  # as timing starts (making the cache is not timed)
        print(
            f"{args.model}, {size} px, batch {batch}, {steps} timed steps after {warmup}; "
            f"{name}; amp {dtype}, channels_last {channels_last}, compile {args.compile}, "
            f"warp on {'GPU' if gpu_warp else f'CPU in {workers} workers'}; "
            f"load average {load0[0]:.1f}"
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        pipeline = timed(pipeline_step, steps, warmup, device)
        print(f"pipeline:   {pipeline:,.1f} img/s")
        full.close()  # stops the loader workers: the model alone gets every core
        model_only = timed(lambda: train_step(x0, y0), steps, warmup, device)
        print(f"model only: {model_only:,.1f} img/s")
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        if cuda:
            print(f"peak GPU memory: {peak:.2f} GiB (max_memory_allocated, both runs)")
        print(
            f"train_step: pipeline {pipeline:,.1f} img/s, model-only {model_only:,.1f} img/s, "
            f"efficiency {pipeline / model_only:.2f}"
        )
        where = "GPU" if cuda else "CPU"
        setting = {"model": args.model, "image px": size, "batch": batch, "timed steps": steps}
        setting |= {"warm-up steps": warmup, "device": name, "amp": str(dtype)}
        setting |= {"channels_last": channels_last, "compile": args.compile}
        setting |= {"warp": "GPU" if gpu_warp else f"CPU in {workers} workers"}
        setting |= {"peak GPU memory, GiB": None if peak is None else round(peak, 2)}
        write_results(
            "train_step",
            results_tables(
                benchmark=f"train step, {args.model} at {size} px, batch {batch} ({where})",
                pipeline=pipeline,
                model_only=model_only,
                setting=setting,
            ),
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
