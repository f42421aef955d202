"""Build the preprocessed cache: every DICOM once, packed into one memory-mapped uint8 array.

CACHE/images.npy (N, S, S) uint8, CACHE/index.csv (one row per patient, with the original
image's `height` and `width`), CACHE/stats.json (train-only mean/std) and CACHE/errors.csv
(files that could not be read). The build happens in
CACHE.partial/ and is renamed into place only when whole. Rows are written by worker processes
straight into the memory map in chunks; every finished chunk is logged, so an interrupted build
(Ctrl-C, a Colab disconnect, a full disk, a killed worker) resumes where it stopped and yields
the identical cache. Free space is checked and images.npy allocated before any image is read
(`cache_partial`); stats.json records a fingerprint of the inputs, so a cache is not reused
after its label files or images change, and whether the raw folder is marked synthetic
(`provenance.is_synthetic`: `"synthetic": true/false`), which training carries into the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import pneumolib
from pneumolib.base.config import Config, default_workers
from pneumolib.data.cache_check import cache_record, reusable
from pneumolib.data.cache_files import (
    PARAMS,
    current_params,
    errors_path,
    images_path,
    index_path,
    partial_path,
    stats_path,
)
from pneumolib.data.cache_partial import (
    PROGRESS,
    CacheError,
    fill,
    fingerprint_changes,
    input_fingerprint,
    open_partial,
    read_progress,
)
from pneumolib.data.cache_stats import CacheStats, read_stats, write_stats
from pneumolib.data.decode_files import read_files
from pneumolib.data.dicom_detect import image_files
from pneumolib.data.labels import (
    CLASSES_CSV,
    IMAGES_DIR,
    INDEX_COLUMNS,
    LABELS_CSV,
    SplitError,
    check_splittable,
    load_labels,
    make_splits,
)
from pneumolib.data.letterbox import boxes_to_cache
from pneumolib.data.provenance import is_synthetic

_LEVELS = np.arange(256, dtype=np.int64)  # pixel values, for exact moments from a histogram


__all__ = ["CacheError", "build_cache", "cache_for", "default_workers", "pixel_stats"]


def _process_chunk(args: tuple) -> list[dict]:
    """Worker: read one chunk of files into rows of the partial images.npy -> their metadata."""
    images_path, rows, paths, size, reduced, decoder, allow_any_input = args
    images = np.load(images_path, mmap_mode="r+")
    out = []
    results = read_files(
        paths, size, reduced=reduced, decoder=decoder, allow_any_input=allow_any_input
    )
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


def cache_for(
    cfg: Config,
    *,
    workers: int = -1,
    reduced: bool = True,
    decoder: str = "opencv",
    rebuild: bool = False,
    progress: bool = True,
    allow_any_input: bool = False,
) -> Path:
    """The cache of `cfg` (`cfg.raw` -> `cfg.cache` at `cfg.cache_size`, its split rule, seed
    and fractions): the one way from a config to a cache, used by the notebooks, the demo,
    Colab and the `preprocess` command. Returns at once when it exists. The keywords change how
    it is built, not what it holds (see `build_cache`)."""
    return build_cache(
        cfg.raw,
        cfg.cache,
        size=cfg.cache_size,
        split=cfg.split,
        seed=cfg.seed,
        val_frac=cfg.val_frac,
        test_frac=cfg.test_frac,
        workers=workers,
        reduced=reduced,
        decoder=decoder,
        rebuild=rebuild,
        progress=progress,
        allow_any_input=allow_any_input,
    )


def build_cache(
    raw: str | Path,
    out: str | Path,
    *,
    size: int = 256,
    workers: int = -1,
    split: str = "stratified",
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    reduced: bool = True,
    decoder: str = "opencv",
    rebuild: bool = False,
    chunk: int = 64,
    progress: bool = True,
    allow_any_input: bool = False,
) -> Path:
    """Build CACHE from an RSNA-shaped RAW folder; returns the cache path.

    `workers`: decoding processes as everywhere (`config.default_workers`): -1 = one per core,
    0 (or 1) = in this process. `decoder`: "opencv" (CPU, default), or "cuda" / "cpu" for
    torchvision's batched decode_jpeg (nvJPEG on a GPU). A finished cache with the same
    parameters and inputs is reused; one with other parameters, or made from other label files
    or images, is refused unless `rebuild=True`. Files that could not be read are retried when
    an unfinished build resumes. An image that is not a chest film (`film.film_problem`: a
    header saying CT, MR, US... or another body part, colour, too small, too elongated) goes
    to errors.csv, with one summary line, unless `allow_any_input`.
    """
    raw, out = Path(raw), Path(out)
    params = _params(raw, size, split, seed, val_frac, test_frac, reduced)
    if allow_any_input:  # recorded only when set: caches made without it match either way
        params["allow_any_input"] = True
    if stats_path(out).exists() and _reuse(out, raw, params, rebuild=rebuild):
        return out
    labels, paths, errors, inputs = _inputs(raw)
    synthetic = is_synthetic(raw)  # read before the long part: a bad marker fails at once
    _check_splittable(raw, labels, split=split, val_frac=val_frac, test_frac=test_frac, seed=seed)
    n = len(labels)
    part = partial_path(out)
    open_partial(part, {**params, "n": n, "inputs": inputs}, shape=(n, size, size), rebuild=rebuild)
    done = read_progress(part / PROGRESS)
    todo = [r for r in range(n) if r not in done]
    any_ok = allow_any_input
    jobs = [
        (str(images_path(part)), rows, [paths[r] for r in rows], size, reduced, decoder, any_ok)
        for rows in (todo[i : i + chunk] for i in range(0, len(todo), chunk))
    ]
    if done:
        print(f"resuming {part}: {len(done)} of {n} images already done")
    in_process = decoder == "cuda"  # CUDA cannot be forked into
    t0 = time.perf_counter()
    fill(
        part,
        _process_chunk,
        jobs=jobs,
        done=done,
        workers=0 if in_process else default_workers(workers),
        progress=progress,
        n=n,
    )
    elapsed = max(time.perf_counter() - t0, 1e-9)
    _finish(
        part,
        out,
        labels=labels,
        done=done,
        errors=errors,
        params=params,
        inputs=inputs,
        synthetic=synthetic,
    )
    _report(out, done=done, n=n, size=size, mismatches=len(errors), rate=len(todo) / elapsed)
    return out


def _report(out: Path, *, done: dict, n: int, size: int, mismatches: int, rate: float) -> None:
    """The build's summary line, and one note for the images left out as not chest films."""
    failed = sum("error" in m for m in done.values())
    not_film = sum(bool(m.get("not_film")) for m in done.values())
    print(
        f"cache {out}: {n - failed} images of {size}x{size}, {failed - not_film} unreadable, "
        f"{mismatches} label/image mismatches; {rate:.0f} images/s"
        + (f" (see {errors_path(out)})" if failed or mismatches else "")
    )
    if not_film:
        print(
            f"note: {not_film} file(s) are not chest films, left out (listed in "
            f"{errors_path(out)}; --allow-any-input keeps them)"
        )


def _reuse(out: Path, raw: Path, params: dict, *, rebuild: bool) -> bool:
    """True when the finished cache `out` was made with `params` from the inputs in `raw` now;
    False when it is to be rebuilt (`rebuild`); else a CacheError saying what differs."""
    if not reusable(out, rebuild=rebuild):  # damaged since it was made: rebuilt
        return False
    stats = read_stats(out)
    old = current_params(dict(stats.params or {}))
    if old != params:
        if rebuild:
            return False
        diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        raise CacheError(
            f"{out}: existing cache was made with other parameters {diff}; "
            "pass --rebuild to replace it"
        )
    if stats.inputs is None or not (raw / LABELS_CSV).is_file():
        why = "made before input fingerprints" if stats.inputs is None else f"{raw} not found"
        print(f"cache {out} matches its parameters ({why}: inputs not checked); nothing to do")
        return True
    changes = fingerprint_changes(dict(stats.inputs), _scan(raw)[1])
    if not changes:
        print(f"cache {out} is complete and matches; nothing to do")
        return True
    if rebuild:
        return False
    raise CacheError(
        f"{out}: the inputs in {raw} changed since this cache was made ({'; '.join(changes)}); "
        "pass rebuild=True (--rebuild) to rebuild it"
    )


def _scan(raw: Path) -> tuple[dict[str, Path], dict]:
    """RAW -> (patientId -> image path, the fingerprint of the inputs), checking the layout."""
    if not (raw / LABELS_CSV).exists():
        raise CacheError(f"{raw / LABELS_CSV}: label file not found (is {raw} an RSNA folder?)")
    if not (raw / IMAGES_DIR).is_dir():
        raise CacheError(f"{raw / IMAGES_DIR}: image folder not found")
    on_disk = image_files(raw / IMAGES_DIR)  # <patientId>.dcm, or a DICOM by content
    return on_disk, input_fingerprint([raw / LABELS_CSV, raw / CLASSES_CSV], on_disk.values())


def _inputs(raw: Path) -> tuple[pd.DataFrame, list[str], list[dict], dict]:
    """RAW -> (labels of the patients with an image, their image paths, label/image
    mismatches as error rows, the fingerprint of the inputs)."""
    on_disk, inputs = _scan(raw)
    labels = load_labels(raw / LABELS_CSV, raw / CLASSES_CSV)
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
    if len(labels) == 0:
        raise CacheError(f"{raw}: no labelled images found")
    return labels, [str(on_disk[p]) for p in labels.patientId], errors, inputs


def _check_splittable(
    raw: Path, labels: pd.DataFrame, *, split: str, val_frac: float, test_frac: float, seed: int
) -> None:
    """Refuse, before any image is read, labels whose val or test split would lack a class."""
    try:
        check_splittable(labels, rule=split, val_frac=val_frac, test_frac=test_frac, seed=seed)
    except SplitError as e:
        raise CacheError(f"{raw}: {e}") from None


def _boxes_to_cache(boxes: list, meta: dict, size: int) -> list[list[float]]:
    """Boxes [x, y, w, h] in the DICOM's pixels -> in the cache image's (`letterbox` rule for
    the original `height`, `width`), to 0.01 px."""
    cached = boxes_to_cache(boxes, height=meta["height"], width=meta["width"], size=size)
    return [[round(float(v), 2) for v in b] for b in cached]


def _finish(
    part: Path,
    out: Path,
    *,
    labels: pd.DataFrame,
    done: dict[int, dict],
    errors: list,
    params: dict,
    inputs: dict,
    synthetic: bool,
) -> None:
    """Write index.csv, errors.csv and stats.json into PART, then put it in place as OUT."""
    size, split, seed = params["size"], params["split_rule"], params["seed"]
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

    idx["boxes"] = [
        json.dumps(_boxes_to_cache(bs, done[r], size)) for bs, r in zip(idx.boxes, ok, strict=True)
    ]
    idx["height"] = [int(done[r]["height"]) for r in ok]  # the original image's pixels
    idx["width"] = [int(done[r]["width"]) for r in ok]
    idx = idx.reset_index(drop=True)
    idx["split"] = make_splits(
        idx, rule=split, val_frac=params["val_frac"], test_frac=params["test_frac"], seed=seed
    )
    idx[list(INDEX_COLUMNS)].to_csv(index_path(part), index=False)
    pd.DataFrame(errors, columns=["patientId", "path", "error"]).to_csv(
        errors_path(part), index=False
    )
    train_rows = idx.loc[idx.split == "train", "row"].to_numpy()
    mean, std = pixel_stats([done[r] for r in train_rows], size * size)
    stats = CacheStats(
        mean=mean,
        std=std,
        size=size,
        n=len(idx),
        n_train=int((idx.split == "train").sum()),
        positive_rate=float(idx.target.mean()),
        source=params["source"],
        synthetic=synthetic,
        split_rule=split,
        seed=seed,
        package_version=pneumolib.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        params=params,
        inputs=inputs,
        **cache_record(part),  # size of images.npy and hash of index.csv, checked on each use
    )
    write_stats(stats, stats_path(part))
    (part / PROGRESS).unlink(missing_ok=True)
    (part / PARAMS).unlink(missing_ok=True)
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
