"""The stages of `benchmarks/gpu_check.sh`, one subcommand each; see that script for usage.

Every measuring subcommand appends rows `stage, setting, figure, target/ratio` to
REPORT/results.tsv (tab-separated) and named numbers to REPORT/figures.json, where a later
stage finds them (the nvJPEG ratio needs the opencv rate). A stage that fails writes a FAILED
row with the reason and exits 1; `table` prints all rows as one Markdown table.

    python benchmarks/gpu_check.py env
    python benchmarks/gpu_check.py data --raw RAW --n 2000 [--size 1024] [--template DCM]
    python benchmarks/gpu_check.py decode --report R --raw RAW --cache C --decoder opencv|cuda|cpu
    python benchmarks/gpu_check.py probe --report R [--models resnet18,resnet50] [--size 224]
    python benchmarks/gpu_check.py train-step --report R --cache C --model M [--compile] ...
    python benchmarks/gpu_check.py epoch-cache --base C --out BIG [--train 24000] [--val 2684]
    python benchmarks/gpu_check.py epoch --report R --cache BIG [--batch 256] [--image-size 224]
    python benchmarks/gpu_check.py row --report R STAGE SETTING FIGURE TARGET
    python benchmarks/gpu_check.py table --report R
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# torch, pandas and pneumolib are imported inside the subcommands that need them: `row` and
# `table` run between every stage and must not pay seconds of imports each.

HERE = Path(__file__).resolve().parent
RESULTS, FIGURES = "results.tsv", "figures.json"
COLUMNS = ("stage", "setting", "figure", "target/ratio")
EFFICIENCY_TARGET, EPOCH_TARGET_S = 0.95, 6.0
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
TEMPLATE_DRAW = 128  # side of the phantoms drawn only for their labels and headers
# build_cache's last line, e.g. "cache X: 1998 images of 256x256, 2 unreadable, 0 label/image
# mismatches; 893 images/s"
CACHE_LINE = re.compile(r"cache .*: (\d+) images of (\d+)x\d+, (\d+) unreadable.*; (\S+) images/s")
TRAIN_STEP_LINE = re.compile(
    r"train_step: pipeline ([\d,.]+) img/s, model-only ([\d,.]+) img/s, efficiency"
)
TRAIN_STEP_HEAD = re.compile(r"amp (\S+), channels_last (\S+), compile (\S+), warp on (.+?);")
PEAK_LINE = re.compile(r"peak GPU memory: ([\d.]+) GiB")


# --- rows and figures ------------------------------------------------------------------------


def add_row(report: Path, stage: str, *, setting: str, figure: str, target: str) -> None:
    """Append one table row to REPORT/results.tsv."""
    report.mkdir(parents=True, exist_ok=True)
    # one line per row, and no "|" to break the Markdown table
    cells = [
        re.sub(r"\s+", " ", str(c)).replace("|", "/").strip()
        for c in (stage, setting, figure, target)
    ]
    with open(report / RESULTS, "a") as f:
        f.write("\t".join(cells) + "\n")
    print(f"  -> {' | '.join(cells)}", flush=True)


def save_figure(report: Path, key: str, value: float) -> None:
    report.mkdir(parents=True, exist_ok=True)
    path = report / FIGURES
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[key] = value
    path.write_text(json.dumps(figures, indent=1))


def figure(report: Path, key: str) -> float | None:
    path = report / FIGURES
    return json.loads(path.read_text()).get(key) if path.exists() else None


def fail(report: Path, stage: str, setting: str, reason: str) -> int:
    add_row(report, stage, setting=setting, figure=f"FAILED: {reason}", target="–")
    return 1


def run_streaming(cmd: list[str]) -> tuple[int, str]:
    """Run cmd, echoing its output line by line -> (exit code, all output)."""
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- env ---------------------------------------------------------------------------------------


def cmd_env(a: argparse.Namespace) -> int:
    """Versions and the GPU; exit 0 with a CUDA GPU, 3 without."""
    import platform
    from importlib.metadata import version

    import torch

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{version('torchvision')}, CUDA (torch build) {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU cores available: {cores}; load average {os.getloadavg()[0]:.1f}")
    if not torch.cuda.is_available():
        return 3
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(
            f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
            f"{p.major}.{p.minor}, {p.multi_processor_count} SMs"
        )
    print(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    return 0


# --- data: 1024 px JPEG DICOMs, made in parallel shards ------------------------------------------


def _shard(job: tuple) -> None:
    import pandas as pd
    import pydicom

    from pneumolib.data.synth import make_demo_data

    out, n, size, seed, template = job
    if template is None:
        make_demo_data(out, n=n, size=size, seed=seed)
        return
    # The template's frame replaces the phantom's pixels: draw small phantoms (a quarter of
    # the time) and scale their boxes to the template's pixels.
    raw = make_demo_data(out, n=n, size=TEMPLATE_DRAW, seed=seed)
    labels = raw / "stage_2_train_labels.csv"
    df = pd.read_csv(labels, dtype=str, keep_default_na=False)
    for col in ("x", "y", "width", "height"):
        df[col] = [f"{float(v) * size / TEMPLATE_DRAW:.1f}" if v else "" for v in df[col]]
    df.to_csv(labels, index=False)
    t = pydicom.dcmread(template)
    for f in sorted((raw / "stage_2_train_images").glob("*.dcm")):
        ds = pydicom.dcmread(f)  # keep the phantom's patient, labels and header; real pixels
        ds.PixelData = t.PixelData
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.Rows, ds.Columns = t.Rows, t.Columns
        ds.save_as(f, enforce_file_format=True)


def cmd_data(a: argparse.Namespace) -> int:
    """RAW: an RSNA-shaped folder of N JPEG Baseline DICOMs (phantoms, or phantoms carrying the
    template's real JPEG frame), made in one shard per core and merged; reused when present."""
    import multiprocessing as mp

    import pandas as pd
    import pydicom

    raw = Path(a.raw)
    template = Path(a.template).resolve() if a.template else None
    size = a.size
    if template is not None:
        t = pydicom.dcmread(template, stop_before_pixels=True)
        if t.file_meta.TransferSyntaxUID != JPEG_BASELINE or t.SamplesPerPixel != 1:
            print(f"{template}: not a JPEG Baseline greyscale DICOM; using phantoms")
            template = None
        else:
            size = int(t.Rows)  # the labels' boxes are drawn in the template's pixels
    kind = f"real frame of {template.name}" if template else "phantoms"
    params = {"n": a.n, "size": size, "kind": kind}
    marker = raw / "gpu_check.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        print(f"data: {raw} is ready ({json.loads(marker.read_text())['summary']})")
        return 0
    shutil.rmtree(raw, ignore_errors=True)
    t0 = time.perf_counter()
    k = max(1, min(a.workers or os.cpu_count() or 1, a.n // 25 or 1))
    shards = [raw.with_name(f"{raw.name}.shard{i}") for i in range(k)]
    for s in shards:
        shutil.rmtree(s, ignore_errors=True)
    jobs = [(s, a.n // k + (i < a.n % k), size, 1000 + i, template) for i, s in enumerate(shards)]
    with mp.get_context("fork").Pool(k) as pool:
        pool.map(_shard, jobs)
    (raw / "stage_2_train_images").mkdir(parents=True)
    for name in ("stage_2_train_labels.csv", "stage_2_detailed_class_info.csv"):
        frames = [pd.read_csv(s / name, dtype=str, keep_default_na=False) for s in shards]
        pd.concat(frames).to_csv(raw / name, index=False)
    for s in shards:
        for f in (s / "stage_2_train_images").iterdir():
            f.rename(raw / "stage_2_train_images" / f.name)
        shutil.rmtree(s)
    files = list((raw / "stage_2_train_images").glob("*.dcm"))
    kib = sum(f.stat().st_size for f in files) / 1024 / len(files)
    summary = (
        f"{len(files)} DICOMs, {size}x{size} JPEG Baseline, {kind}, {kib:.0f} KiB/file, "
        f"made in {time.perf_counter() - t0:.0f} s on {k} processes"
    )
    marker.write_text(json.dumps({"params": params, "summary": summary, "kind": kind}))
    print(f"data: {raw}: {summary}")
    return 0


# --- decode: the preprocess command, opencv against nvJPEG ----------------------------------------


def _warm_page_cache(raw: Path) -> list[Path]:
    files = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    for f in files:  # every decoder reads from memory, none from disk
        f.read_bytes()
    return files


def _agreement(a_cache: Path, b_cache: Path) -> tuple[float, float]:
    """(mean, max over images) of the per-image mean |a - b| grey levels, matched by patient."""
    import numpy as np

    from pneumolib.data.labels import open_images, read_index

    ia, ib = read_index(a_cache), read_index(b_cache)
    both = ia.merge(ib, on="patientId", suffixes=("_a", "_b"))
    xa, xb = open_images(a_cache), open_images(b_cache)
    diffs = [
        float(np.abs(xa[ra].astype(np.int16) - xb[rb]).mean())
        for ra, rb in zip(both.row_a, both.row_b, strict=True)
    ]
    return float(np.mean(diffs)), float(np.max(diffs))


def cmd_decode(a: argparse.Namespace) -> int:
    """`python -m pneumolib preprocess --decoder D` on RAW, as a user runs it (a fresh process,
    all cores for opencv); for cuda also in-process after a CUDA warm-up, and the agreement
    of the decoded cache with the opencv one."""
    report, raw, cache = Path(a.report), Path(a.raw), Path(a.cache)
    info = json.loads((raw / "gpu_check.json").read_text())
    files = _warm_page_cache(raw)
    side = info["params"]["size"]
    data = f"{len(files)} DICOMs {side}² ({info['kind']}) -> {a.cache_size}²"
    names = {
        "opencv": "opencv (CPU, reduced-scale decode, all cores)",
        "cuda": "cuda: nvJPEG (torchvision decode_jpeg)",
        "cpu": "cpu: torchvision decode_jpeg (CPU stand-in for the cuda path)",
    }
    setting = f"{names[a.decoder]}; {data}; CLI, fresh process"
    for p in (cache, cache.with_name(cache.name + ".partial")):
        shutil.rmtree(p, ignore_errors=True)
    cmd = [sys.executable, "-m", "pneumolib", "preprocess", "--raw", str(raw), "--out", str(cache)]
    cmd += ["--size", str(a.cache_size), "--decoder", a.decoder]
    t0 = time.perf_counter()
    rc, out = run_streaming(cmd)
    wall = time.perf_counter() - t0
    m = CACHE_LINE.search(out)
    if rc or not m:
        return fail(report, "decode", setting, f"exit {rc}: {last_line(out)}")
    ok, unreadable, rate = int(m[1]), int(m[3]), float(m[4])
    save_figure(report, f"decode_{a.decoder}", rate)
    base = figure(report, "decode_opencv")
    target = (
        "baseline"
        if a.decoder == "opencv"
        else (f"{rate / base:.2f}x opencv" if base else "opencv rate missing")
    )
    bad = f", {unreadable} unreadable" if unreadable else ""
    fig = f"{rate:,.0f} img/s ({ok} images{bad}; command {wall:.1f} s)"
    add_row(report, "decode", setting=setting, figure=fig, target=target)
    status = 0
    if a.decoder == "cuda":
        status = _decode_cuda_warm(report, raw, cache, files, data, a.cache_size, base)
    if a.against and (Path(a.against) / "stats.json").exists():
        mean, worst = _agreement(Path(a.against), cache)
        # build_cache falls back to opencv, file by file and silently, where decode_jpeg fails:
        # then the two caches are identical and the rate above is not nvJPEG's
        expect = (
            "SUSPECT: identical to opencv, did decode_jpeg fail and fall back?"
            if worst == 0
            else "0 < mean <= ~0.5 expected (opencv decodes at reduced DCT scale)"
        )
        add_row(
            report,
            "decode",
            setting=f"pixels of the {a.decoder} cache against the opencv cache",
            figure=f"mean abs difference {mean:.2f} grey levels (worst image {worst:.2f})",
            target=expect,
        )
    return status


def _decode_cuda_warm(
    report: Path,
    raw: Path,
    cache: Path,
    files: list[Path],
    data: str,
    size: int,
    base: float | None,
) -> int:
    import contextlib
    import io

    sys.path.insert(0, str(HERE))
    from preprocess import cuda_ready  # the sibling benchmark: warms up CUDA and nvJPEG

    from pneumolib.data.preprocess import build_cache

    setting = f"cuda: nvJPEG, in-process build_cache after CUDA warm-up; {data}"
    why = cuda_ready(files[0])
    if why:
        return fail(report, "decode", setting, why)
    out = cache.with_name(cache.name + "_warm")
    shutil.rmtree(out, ignore_errors=True)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        build_cache(raw, out, size=size, decoder="cuda", progress=False)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    m = CACHE_LINE.search(buf.getvalue())
    if not m:
        return fail(report, "decode", setting, last_line(buf.getvalue()))
    rate = float(m[4])
    save_figure(report, "decode_cuda_warm", rate)
    target = f"{rate / base:.2f}x opencv" if base else "opencv rate missing"
    add_row(
        report,
        "decode",
        setting=setting,
        figure=f"{rate:,.0f} img/s ({wall:.1f} s whole call)",
        target=target,
    )
    return 0


# --- micro-batch probe -------------------------------------------------------------------------


def cmd_probe(a: argparse.Namespace) -> int:
    """What `tune.auto_max_micro_batch` picks per model, and whether one step at that size fits."""
    import torch

    from pneumolib.base.config import Config
    from pneumolib.core import runtime
    from pneumolib.core.models import build_model, trainable_parameters
    from pneumolib.train import setup as train_setup
    from pneumolib.tune.plan import auto_max_micro_batch, probe_cuda

    report, status = Path(a.report), 0
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    for name in a.models.split(","):
        cfg = Config(model=name, image_size=a.size, device="cuda", weights="none")
        dtype = runtime.amp_dtype(device, cfg.amp)
        setting = f"{name} {a.size} px, amp {dtype}, channels-last (auto_max_micro_batch, 0.6)"
        try:
            pick = auto_max_micro_batch(cfg)
            per_image, free = probe_cuda(cfg, device)
            torch.cuda.empty_cache()
            # one training step at the pick: does it fit, and how full is the GPU then?
            model = build_model(name, "finetune", "none").to(device)
            model = model.to(memory_format=torch.channels_last)
            opt = train_setup.make_optimizer(trainable_parameters(model), cfg)
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.randn(pick, 1, a.size, a.size, device=device)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = model(x).float().mean()
            loss.backward()
            opt.step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            del model, opt, x, loss
            torch.cuda.empty_cache()
        except Exception as e:  # one model failing must not hide the other's figure
            status = fail(report, "micro-batch probe", setting, f"{type(e).__name__}: {e}")
            continue
        add_row(
            report,
            "micro-batch probe",
            setting=setting,
            figure=f"picks {pick} ({per_image / 2**20:.1f} MiB/image, {free / 2**30:.0f} GiB free)",
            target=f"a step at {pick} peaks at {peak / 2**30:.1f} of {total / 2**30:.0f} GiB",
        )
    return status


# --- train step: benchmarks/train_step.py ------------------------------------------------------


def cmd_train_step(a: argparse.Namespace) -> int:
    """benchmarks/train_step.py for one model/compile setting -> throughput, efficiency, memory."""
    report, cache = Path(a.report), Path(a.cache)
    cmd = [sys.executable, str(HERE / "train_step.py"), "--model", a.model, "--device", a.device]
    cmd += ["--results", str(report.parent / "results")]  # beside the report, not the repo's
    if (cache / "stats.json").exists():
        cmd += ["--cache", str(cache)]
    else:  # the decode stage did not leave a cache: train_step makes (and keeps) its own
        cmd += ["--work", str(cache.with_name("train_step_data"))]
    for flag in ("size", "batch", "steps", "warmup", "workers"):
        if getattr(a, flag) is not None:
            cmd += [f"--{flag}", str(getattr(a, flag))]
    if a.compile:
        cmd.append("--compile")
    sanity = a.device == "cpu"
    base = f"{a.model}, compile {'on' if a.compile else 'off'}"
    t0 = time.perf_counter()
    rc, out = run_streaming(cmd)
    wall = time.perf_counter() - t0
    m, head = TRAIN_STEP_LINE.search(out), TRAIN_STEP_HEAD.search(out)
    if rc or not m or not head:
        return fail(report, "train step", base, f"exit {rc}: {last_line(out)}")
    size = re.search(r", (\d+) px, batch (\d+)", out)
    setting = (
        f"{a.model} {size[1]} px, batch {size[2]}, amp {head[1]}, channels-last {head[2]}, "
        f"warp on {head[4]}, compile {'on' if a.compile else 'off'} ({wall:.0f} s in all)"
    )
    pipeline, alone = (float(m[i].replace(",", "")) for i in (1, 2))
    eff = pipeline / alone
    target = (
        f"efficiency {eff:.2f} (CPU sanity run, not a measurement)"
        if sanity
        else f"efficiency {eff:.2f}; target >= {EFFICIENCY_TARGET}: {verdict(eff >= 0.95)}"
    )
    fig = f"{pipeline:,.0f} img/s end to end, {alone:,.0f} img/s model alone"
    add_row(report, "train step", setting=setting, figure=fig, target=target)
    peak = PEAK_LINE.search(out)
    if peak:
        add_row(
            report,
            "peak GPU memory",
            setting=setting,
            figure=f"{float(peak[1]):.2f} GiB",
            target="–",
        )
    elif not sanity:
        return fail(report, "peak GPU memory", setting, "train_step.py printed no peak")
    return 0


DETECT_LINE = re.compile(
    r"detect step: ([\d,.]+) img/s \(classifier ([\d,.]+) img/s, ratio ([\d.]+)x\), (.*)"
)


def cmd_detect_step(a: argparse.Namespace) -> int:
    """benchmarks/detect_step.py -> the detector's training images/s beside the classifier's."""
    report = Path(a.report)
    cmd = [sys.executable, str(HERE / "detect_step.py"), "--device", a.device]
    cmd += ["--size", str(a.size), "--batch", str(a.batch), "--steps", str(a.steps)]
    setting = f"FCOS resnet18-FPN {a.size} px, batch {a.batch}"
    rc, out = run_streaming(cmd)
    m = DETECT_LINE.search(out)
    if rc or not m:
        return fail(report, "detect step", setting, f"exit {rc}: {last_line(out)}")
    sanity = a.device == "cpu"
    add_row(
        report,
        "detect step",
        setting=f"{setting}, {m[4]}",
        figure=f"{m[1]} img/s (classifier {m[2]} img/s: {m[3]}x)",
        target="CPU sanity run, not a measurement" if sanity else "–",
    )
    return 0


# --- epoch: a 24,000-image cache, one pass of train.fit -----------------------------------------


def tile_cache(base: Path, out: Path, n_train: int, n_val: int) -> Path:
    """A cache of n_train + n_val rows in the exact `preprocess` format, the base cache's images
    repeated in turn: rows [0, n_train) are split train, the rest val. Reused when present."""
    import numpy as np
    import pandas as pd

    from pneumolib.data.cache_check import seal_cache
    from pneumolib.data.labels import open_images, read_index, read_stats

    params = {"base": str(base.resolve()), "n_train": n_train, "n_val": n_val}
    if (out / "stats.json").exists() and read_stats(out).params == params:
        return out
    idx, src, stats = read_index(base), open_images(base), read_stats(base)
    n, k, side = n_train + n_val, len(idx), src.shape[1]
    pos = np.arange(n) % k  # which base row each new row copies
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    images = np.lib.format.open_memmap(part / "images.npy", "w+", np.uint8, (n, side, side))
    base_rows = idx.row.to_numpy()
    for start in range(0, n, k):  # one whole copy of the base images at a time
        stop = min(start + k, n)
        images[start:stop] = src[base_rows[pos[start:stop]]]
    images.flush()
    del images
    new = idx.iloc[pos].reset_index(drop=True)
    new["patientId"] = [f"{p}-{i // k}" for i, p in enumerate(new.patientId)]
    new["row"] = np.arange(n)
    new["split"] = np.where(np.arange(n) < n_train, "train", "val")
    new["boxes"] = [json.dumps(b) for b in new.boxes]
    cols = ["patientId", "row", "target", "class", "split", "sex", "age", "view", "boxes"]
    new[cols].to_csv(part / "index.csv", index=False)
    pd.DataFrame(columns=["patientId", "path", "error"]).to_csv(part / "errors.csv", index=False)
    # train mean/std (as preprocess.pixel_stats: pixels scaled to [0, 1]) from each base
    # image's integer moments, weighted by its number of copies among the train rows
    levels = np.arange(256, dtype=np.int64)
    hists = np.stack([np.bincount(src[r].ravel(), minlength=256) for r in base_rows])
    copies = np.bincount(pos[:n_train], minlength=k)
    count = copies.sum() * side * side
    mean = float(copies @ hists @ levels / 255.0 / count)
    sq = float(copies @ hists @ levels**2 / 255.0**2 / count)
    std = float(np.sqrt(max(sq - mean**2, 0.0)))
    tiled = {
        **stats.to_dict(),
        "mean": mean,
        "std": std,
        "n": n,
        "n_train": n_train,
        "positive_rate": float(new.target.mean()),
        "source": f"{base} tiled to {n} rows (benchmarks/gpu_check.py)",
        "split_rule": f"first {n_train} rows train, the rest val",
        "params": params,
    }
    (part / "stats.json").write_text(json.dumps(tiled, indent=2))
    seal_cache(part)  # the tiled files' own size and hash, not the base cache's
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)
    return out


def _base_cache(base: Path) -> Path:
    """The decode stage's cache, or (where that stage failed) a small phantom one made here."""
    if (base / "stats.json").exists():
        return base
    from pneumolib.data.preprocess import build_cache
    from pneumolib.data.synth import make_demo_data

    raw = make_demo_data(base.with_name("raw_fallback"), n=300, size=256, seed=0)
    return build_cache(raw, base.with_name("cache_fallback"), size=256, progress=False)


def cmd_epoch_cache(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = tile_cache(_base_cache(Path(a.base)), Path(a.out), a.train, a.val)
    gib = (out / "images.npy").stat().st_size / 2**30
    print(f"epoch cache: {out}, {a.train:,} train + {a.val:,} val rows, {gib:.2f} GiB, ", end="")
    print(f"ready in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_epoch(a: argparse.Namespace) -> int:
    """`train.fit` for --epochs epochs over the whole train split (max_steps_per_epoch=0);
    fit's own per-epoch seconds (train loop + val pass) and the train loop alone."""
    import torch

    from pneumolib.base.config import Config
    from pneumolib.core.runtime import amp_dtype, resolve_device
    from pneumolib.data.labels import read_stats
    from pneumolib.train.loop import fit

    report, cache = Path(a.report), Path(a.cache)
    stats = read_stats(cache)
    n_train, n_val = stats.n_train, stats.n - stats.n_train
    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    dtype = amp_dtype(device, enabled=True)
    setting = (
        f"train.fit, resnet18 {a.image_size} px, batch {a.batch}, amp {dtype}, "
        f"channels-last {cuda}, warp on {'GPU' if cuda else 'CPU'}, compile off; "
        f"{n_train:,} train + {n_val:,} val images"
    )
    out = Path(a.run)
    shutil.rmtree(out, ignore_errors=True)
    cfg = Config(
        cache=str(cache),
        out=str(out),
        model="resnet18",
        mode="finetune",
        weights="none",  # no download; the same compute as ImageNet weights
        image_size=a.image_size,
        batch_size=a.batch,
        epochs=a.epochs,
        device=str(device),
        workers=a.workers,
        max_steps_per_epoch=0,
    )
    marks: dict[str, list[float]] = {"step": [], "epoch": []}
    last_step: list[float] = []

    def callback(event: str, state: dict) -> None:
        marks[event].append(time.perf_counter())
        if event == "epoch":
            last_step.append(marks["step"][-1])

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    try:
        summary = fit(cfg, callback=callback, progress=False)
    except Exception as e:
        return fail(report, "epoch", setting, f"{type(e).__name__}: {e}")
    peak = (
        f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        if cuda
        else ""
    )
    seconds = summary["history"]["seconds"].tolist()
    for e, s in enumerate(seconds):
        if e == 0:  # fit's set-up (index, model, loader workers) comes before its epoch clock
            loop = last_step[0] - t_start
            how = f"{loop:.1f} s from calling fit to its last train step"
        else:  # the previous epoch's callback is the last thing before this epoch's clock
            loop = last_step[e] - marks["epoch"][e - 1]
            how = f"train loop {loop:.1f} s = {n_train / loop:,.0f} img/s"
        fig = f"{s:.1f} s by fit (train loop + val pass); {how}{peak}"
        target = (
            "CPU sanity run, not a measurement"
            if not cuda
            else f"target < {EPOCH_TARGET_S:.0f} s: {verdict(s < EPOCH_TARGET_S)}"
        )
        add_row(report, "epoch", setting=f"{setting}; epoch {e + 1}", figure=fig, target=target)
    shutil.rmtree(out, ignore_errors=True)
    return 0


# --- the table -----------------------------------------------------------------------------------


def cmd_row(a: argparse.Namespace) -> int:
    add_row(Path(a.report), a.stage, setting=a.setting, figure=a.figure, target=a.target)
    return 0


def cmd_table(a: argparse.Namespace) -> int:
    """Every row of REPORT/results.tsv as one Markdown table (also written to REPORT/table.md)."""
    path = Path(a.report) / RESULTS
    rows = [ln.split("\t") for ln in path.read_text().splitlines()] if path.exists() else []
    rows = [r + [""] * (4 - len(r)) for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    text = "\n".join(
        [line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r[:4]) for r in rows]
    )
    print(text)
    Path(a.report).mkdir(parents=True, exist_ok=True)
    (Path(a.report) / "table.md").write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("env")
    p = sub.add_parser("data")
    p.add_argument("--raw", required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--template", default=None)
    p.add_argument("--workers", type=int, default=0)
    p = sub.add_parser("decode")
    p.add_argument("--report", required=True)
    p.add_argument("--raw", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--decoder", choices=["opencv", "cuda", "cpu"], required=True)
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--against", default=None, help="the opencv cache, to compare pixels with")
    p = sub.add_parser("probe")
    p.add_argument("--report", required=True)
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--size", type=int, default=224)
    p = sub.add_parser("train-step")
    p.add_argument("--report", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    for flag in ("size", "batch", "steps", "warmup", "workers"):
        p.add_argument(f"--{flag}", type=int, default=None)
    p = sub.add_parser("detect-step")
    p.add_argument("--report", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p = sub.add_parser("epoch-cache")
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=24_000)
    p.add_argument("--val", type=int, default=2_684)
    p = sub.add_parser("epoch")
    p.add_argument("--report", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=-1)
    p = sub.add_parser("row")
    p.add_argument("--report", required=True)
    for col in ("stage", "setting", "figure", "target"):
        p.add_argument(col)
    p = sub.add_parser("table")
    p.add_argument("--report", required=True)
    a = ap.parse_args(argv)
    commands = {
        "env": cmd_env,
        "data": cmd_data,
        "decode": cmd_decode,
        "probe": cmd_probe,
        "train-step": cmd_train_step,
        "detect-step": cmd_detect_step,
        "epoch-cache": cmd_epoch_cache,
        "epoch": cmd_epoch,
        "row": cmd_row,
        "table": cmd_table,
    }
    return commands[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
