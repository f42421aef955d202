"""Build the preprocessed cache: every DICOM once, packed into one memory-mapped uint8 array.

CACHE/images.npy (N, S, S) uint8, CACHE/index.csv (one row per patient), CACHE/stats.json
(train-only mean/std) and CACHE/errors.csv (files that could not be read). The build happens in
CACHE.partial/ and is renamed into place only when whole. Rows are written by worker processes
straight into the memory map in chunks; every finished chunk is logged, so an interrupted build
(Ctrl-C, a Colab disconnect, a full disk) resumes where it stopped and yields the identical cache.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pneumolib.config import Config
from pneumolib.data import load_labels, make_splits
from pneumolib.dicom import DicomError, parse_age, read_dicom
from pneumolib.progress import bar as progress_bar

IMAGES_DIR, LABELS_CSV, CLASSES_CSV = (
    "stage_2_train_images",
    "stage_2_train_labels.csv",
    "stage_2_detailed_class_info.csv",
)
_PROGRESS = "progress.jsonl"
_LEVELS = np.arange(256, dtype=np.int64)  # one JSON line per finished chunk, in CACHE.partial/


class CacheError(RuntimeError):
    """The cache cannot be built as asked; the message says why and what to do."""


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _process_chunk(args: tuple) -> list[dict]:
    """Worker: read one chunk of files into rows of the partial images.npy -> their metadata."""
    images_path, rows, paths, size, reduced, decoder = args
    images = np.load(images_path, mmap_mode="r+")
    out = []
    if decoder == "opencv":
        results = [_read_one(p, size, reduced) for p in paths]
    else:
        results = _read_batch_torchvision(paths, size, decoder)
    for row, path, (pixels, meta) in zip(rows, paths, results, strict=True):
        if pixels is not None:
            images[row] = pixels
            # exact integer moments, so the train mean/std need no second pass over the cache
            hist = np.bincount(pixels.ravel(), minlength=256)
            meta = {**meta, "sum": int(hist @ _LEVELS), "sumsq": int(hist @ _LEVELS**2)}
        out.append({"row": row, **meta, **({"path": path} if "error" in meta else {})})
    images.flush()
    del images
    return out


def _read_one(path: str, size: int, reduced: bool) -> tuple[np.ndarray | None, dict]:
    try:
        d = read_dicom(path, size=size, reduced=reduced)
    except DicomError as e:
        return None, {"error": str(e)}
    except Exception as e:  # never let one file kill the build
        return None, {"error": f"{path}: {type(e).__name__}: {e}"}
    return d.pixels, {**d.meta(), "scale": d.scale, "ox": d.offset[0], "oy": d.offset[1]}


def _read_batch_torchvision(paths: list[str], size: int, device: str) -> list:
    """Decode the JPEG frames of a batch at once with torchvision (nvJPEG when device='cuda')."""
    import pydicom
    import torch
    import torch.nn.functional as F
    from pydicom.encaps import generate_frames
    from torchvision.io import decode_jpeg

    from pneumolib.dicom import letterbox

    results: list = [None] * len(paths)
    frames, where, metas = [], [], []
    for i, p in enumerate(paths):
        try:
            ds = pydicom.dcmread(p)
            if (
                ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.4.50"
                or ds.SamplesPerPixel != 1
            ):
                results[i] = _read_one(p, size, True)  # not RSNA-style: the general reader
                continue
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            frames.append(torch.frombuffer(bytearray(frame), dtype=torch.uint8))
            where.append(i)
            metas.append(ds)
        except Exception as e:
            results[i] = (None, {"error": f"{p}: not a readable DICOM ({type(e).__name__}: {e})"})
    if frames:
        try:
            decoded = decode_jpeg(frames, device=device)
        except RuntimeError:  # one bad frame fails the batch: fall back file by file
            decoded = [None] * len(frames)
        for i, img, ds in zip(where, decoded, metas, strict=True):
            if img is None:
                results[i] = _read_one(paths[i], size, True)
                continue
            h, w = img.shape[-2:]
            if h == w:
                x = F.interpolate(img[None].float(), size=(size, size), mode="area")
                px = x[0, 0].round().clamp(0, 255).to(torch.uint8).cpu().numpy()
                scale, off = size / h, (0.0, 0.0)
            else:
                px, scale, off = letterbox(img[0].cpu().numpy(), size, (h, w))
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                px = 255 - px
            meta = {
                "sex": str(ds.get("PatientSex", "")).upper() or None,
                "age": parse_age(ds.get("PatientAge")),
                "view": str(ds.get("ViewPosition", "")).upper() or None,
                "scale": scale,
                "ox": off[0],
                "oy": off[1],
            }
            results[i] = (px, meta)
    return results


def _params(
    raw: Path, size: int, split: str, seed: int, val_frac: float, test_frac: float, reduced: bool
) -> dict:
    return {
        "source": str(raw.resolve()),
        "size": size,
        "split_rule": split,
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "reduced_decode": reduced,
    }


def cache_for(cfg: Config, *, progress: bool = True) -> Path:
    """The cache of `cfg` (`cfg.raw` -> `cfg.cache` at `cfg.cache_size`, its split rule, seed
    and fractions): the one way from a config to a cache. Returns at once when it exists."""
    return build_cache(
        cfg.raw,
        cfg.cache,
        size=cfg.cache_size,
        split=cfg.split,
        seed=cfg.seed,
        val_frac=cfg.val_frac,
        test_frac=cfg.test_frac,
        progress=progress,
    )


def build_cache(
    raw: str | Path,
    out: str | Path,
    size: int = 256,
    workers: int | None = None,
    split: str = "stratified",
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    reduced: bool = True,
    decoder: str = "opencv",
    rebuild: bool = False,
    chunk: int = 64,
    progress: bool = True,
) -> Path:
    """Build CACHE from an RSNA-shaped RAW folder; returns the cache path.

    `decoder`: "opencv" (CPU, default), or "cuda" / "cpu" for torchvision's batched decode_jpeg
    (nvJPEG on a GPU). A finished cache with the same parameters is reused; one with other
    parameters is refused unless `rebuild=True`.
    """
    raw, out = Path(raw), Path(out)
    params = _params(raw, size, split, seed, val_frac, test_frac, reduced)
    if (out / "stats.json").exists():
        old = json.loads((out / "stats.json").read_text()).get("params", {})
        if old == params:
            print(f"cache {out} is complete and matches; nothing to do")
            return out
        if not rebuild:
            diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
            raise CacheError(
                f"{out}: existing cache was made with other parameters {diff}; "
                "pass --rebuild to replace it"
            )
    if not (raw / LABELS_CSV).exists():
        raise CacheError(f"{raw / LABELS_CSV}: label file not found (is {raw} an RSNA folder?)")
    if not (raw / IMAGES_DIR).is_dir():
        raise CacheError(f"{raw / IMAGES_DIR}: image folder not found")
    labels = load_labels(raw / LABELS_CSV, raw / CLASSES_CSV)
    on_disk = {p.stem: p for p in (raw / IMAGES_DIR).glob("*.dcm")}
    has_image = labels["patientId"].isin(on_disk)
    errors = [
        {
            "patientId": pid,
            "path": str(raw / IMAGES_DIR / f"{pid}.dcm"),
            "error": "label rows but no image file",
        }
        for pid in labels.patientId[~has_image]
    ]
    labelled = set(labels.patientId)
    errors += [
        {"patientId": pid, "path": str(p), "error": "image has no label rows"}
        for pid, p in sorted(on_disk.items())
        if pid not in labelled
    ]
    labels = labels[has_image].reset_index(drop=True)
    n = len(labels)
    if n == 0:
        raise CacheError(f"{raw}: no labelled images found")

    part = out.with_name(out.name + ".partial")
    images_path = part / "images.npy"
    if part.exists() and (part / "params.json").exists():
        if json.loads((part / "params.json").read_text()) != {**params, "n": n}:
            if not rebuild:
                raise CacheError(
                    f"{part}: an unfinished build with other parameters is here; "
                    "pass --rebuild to discard it"
                )
            shutil.rmtree(part)
    if not (part / "params.json").exists():
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        np.lib.format.open_memmap(
            images_path, mode="w+", dtype=np.uint8, shape=(n, size, size)
        ).flush()
        (part / "params.json").write_text(json.dumps({**params, "n": n}))
    done = _read_progress(part / _PROGRESS)
    todo = [r for r in range(n) if r not in done]
    paths = [str(on_disk[p]) for p in labels.patientId]
    jobs = [
        (
            str(images_path),
            todo[i : i + chunk],
            [paths[r] for r in todo[i : i + chunk]],
            size,
            reduced,
            decoder,
        )
        for i in range(0, len(todo), chunk)
    ]
    workers = workers or default_workers()
    if done:
        print(f"resuming {part}: {len(done)} of {n} images already done")
    t0 = time.perf_counter()
    bar = progress_bar(
        total=n, initial=len(done), desc="preprocess", unit="img", disable=not progress
    )
    try:
        with open(part / _PROGRESS, "a") as log:
            for metas in _run(jobs, workers, decoder):
                for m in metas:
                    done[m["row"]] = m
                log.write(json.dumps(metas) + "\n")
                log.flush()
                os.fsync(log.fileno())
                bar.update(len(metas))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CacheError(
                f"{part}: disk full while writing the cache; free space and re-run "
                "the same command to resume"
            ) from None
        raise
    except KeyboardInterrupt:
        raise CacheError(f"{part}: interrupted; re-run the same command to resume") from None
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    _finish(part, out, labels, done, errors, params, size, split, seed, val_frac, test_frac)
    failed = sum("error" in m for m in done.values())
    rate = len(todo) / elapsed if elapsed > 0 else float("nan")
    print(
        f"cache {out}: {n - failed} images of {size}x{size}, {failed} unreadable, "
        f"{len(errors)} label/image mismatches; {rate:.0f} images/s"
        + (f" (see {out / 'errors.csv'})" if failed or errors else "")
    )
    return out


def _run(jobs: list[tuple], workers: int, decoder: str):
    """Yield each chunk's metadata as it finishes, in worker processes when workers > 1."""
    if workers <= 1 or decoder == "cuda" or len(jobs) <= 1:  # CUDA cannot be forked into
        for job in jobs:
            yield _process_chunk(job)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap_unordered(_process_chunk, jobs)


def _read_progress(path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                metas = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the interruption: redo that chunk
                continue
            done.update({m["row"]: m for m in metas})
    return done


def _finish(
    part: Path,
    out: Path,
    labels: pd.DataFrame,
    done: dict[int, dict],
    errors: list,
    params: dict,
    size: int,
    split: str,
    seed: int,
    val_frac: float,
    test_frac: float,
) -> None:
    rows = sorted(done)
    ok = [r for r in rows if "error" not in done[r]]
    errors = errors + [
        {
            "patientId": labels.patientId[r],
            "path": done[r].get("path", ""),
            "error": done[r]["error"],
        }
        for r in rows
        if "error" in done[r]
    ]
    idx = labels.iloc[ok].copy()
    idx["row"] = ok
    for key in ("sex", "age", "view"):
        idx[key] = [done[r].get(key) for r in ok]
    idx["age"] = pd.array(idx["age"], dtype="Int64")

    def to_cache(b: list[float], m: dict) -> list[float]:
        s = m["scale"]
        return [
            round(b[0] * s + m["ox"], 2),
            round(b[1] * s + m["oy"], 2),
            round(b[2] * s, 2),
            round(b[3] * s, 2),
        ]

    idx["boxes"] = [
        json.dumps([to_cache(b, done[r]) for b in bs]) for bs, r in zip(idx.boxes, ok, strict=True)
    ]
    idx = idx.reset_index(drop=True)
    idx["split"] = make_splits(idx, split, val_frac, test_frac, seed)
    cols = ["patientId", "row", "target", "class", "split", "sex", "age", "view", "boxes"]
    idx[cols].to_csv(part / "index.csv", index=False)
    pd.DataFrame(errors, columns=["patientId", "path", "error"]).to_csv(
        part / "errors.csv", index=False
    )
    train_rows = idx.loc[idx.split == "train", "row"].to_numpy()
    mean, std = pixel_stats([done[r] for r in train_rows], size * size)
    from pneumolib import __version__

    stats = {
        "mean": mean,
        "std": std,
        "size": size,
        "n": len(idx),
        "n_train": int((idx.split == "train").sum()),
        "positive_rate": float(idx.target.mean()),
        "source": params["source"],
        "split_rule": split,
        "seed": seed,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": params,
    }
    (part / "stats.json").write_text(json.dumps(stats, indent=2))
    (part / _PROGRESS).unlink(missing_ok=True)
    (part / "params.json").unlink(missing_ok=True)
    if out.exists():  # --rebuild: swap, so a whole cache is always in place
        trash = out.with_name(out.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        out.rename(trash)
        part.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        part.rename(out)


def pixel_stats(moments: list[dict], pixels_per_image: int) -> tuple[float, float]:
    """Mean and std of pixels scaled to [0, 1] from per-image integer `sum` and `sumsq`."""
    if not moments:
        raise CacheError("no train images to compute normalisation statistics from")
    count = len(moments) * pixels_per_image
    total = sum(m["sum"] for m in moments) / 255.0
    sq = sum(m["sumsq"] for m in moments) / 255.0**2
    mean = total / count
    return float(mean), float(np.sqrt(max(sq / count - mean**2, 0.0)))
