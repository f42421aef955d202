"""The unfinished build, CACHE.partial/, and what keeps it honest: disk space checked up front,
images.npy allocated for real, a fingerprint of the inputs, a progress log of finished chunks,
and worker processes whose death ends the build with a message instead of a hang.

A memory map written into a sparse file asks the file system for blocks only when a page is
first written; on a full disk that request fails as SIGBUS, which kills the writer outright
(`multiprocessing.Pool` then waits forever for its result). So the whole file is allocated
before any worker starts, and workers run under `ProcessPoolExecutor`, which reports a dead
worker as `BrokenProcessPool`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from pneumolib.base.errors import PneumolibError
from pneumolib.base.progress import bar as progress_bar
from pneumolib.data.cache_files import PARAMS, current_params, images_path

# Room for index.csv, errors.csv, stats.json and the progress log beside images.npy: a fixed
# part plus about 2.5x the ~400 bytes of text a row takes in them.
SPACE_MARGIN, SPACE_PER_ROW = 64 * 1024, 1024
_BLOCK = 16 * 1024 * 1024  # bytes per write where the fallback allocates by writing
_NOT_SUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_FULL = {errno.ENOSPC, errno.EDQUOT}
PROGRESS = "progress.jsonl"  # one JSON line per finished chunk, in CACHE.partial/


class CacheError(PneumolibError, RuntimeError):
    """The cache cannot be built as asked; the message says why and what to do."""


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk sizes are sold)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def space_needed(n: int, *, unallocated: int) -> int:
    """Bytes a build of `n` rows still needs: the image bytes not yet allocated plus text."""
    return unallocated + SPACE_MARGIN + SPACE_PER_ROW * n


def unallocated_bytes(path: Path) -> int:
    """Bytes of `path` that the file system has not allocated yet (holes of a sparse file)."""
    st = path.stat()
    return max(st.st_size - st.st_blocks * 512, 0)


def check_space(folder: Path, *, needed: int) -> None:
    """Raise CacheError (one line) when the file system of `folder` has under `needed` free."""
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < needed:
        raise CacheError(
            f"{folder}: not enough disk space for the cache: needs {human_bytes(needed)}, "
            f"{human_bytes(free)} free; free some space (or choose another output folder) "
            "and re-run"
        )


def allocate(path: Path, *, part: Path) -> None:
    """Give every byte of `path` a block on disk now, keeping its content.

    A full disk then fails here, as a one-line CacheError, instead of as SIGBUS in a worker
    writing into the memory map later. Uses posix_fallocate; where the file system or the OS
    lacks it, rewrites the file onto itself in blocks (holes read back as zeros).
    """
    size = path.stat().st_size
    try:
        with open(path, "r+b") as f:
            fallocate = getattr(os, "posix_fallocate", None)  # absent on macOS
            try:
                if fallocate is None:
                    raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available")
                fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise
                _write_through(f, size, skip=unallocated_bytes(path) == 0)
    except OSError as e:
        if e.errno in _FULL:
            raise CacheError(
                f"{part}: disk full while allocating the cache ({human_bytes(size)}); "
                "free space and re-run the same command"
            ) from None
        raise


def _write_through(f: Any, size: int, *, skip: bool) -> None:
    """Allocate by writing each block of the open file `f` back onto itself, then fsync."""
    if skip:
        return
    for offset in range(0, size, _BLOCK):
        f.seek(offset)
        data = f.read(min(_BLOCK, size - offset))
        f.seek(offset)
        f.write(data)
    f.flush()
    os.fsync(f.fileno())  # some file systems report a full disk only here


def input_fingerprint(label_files: Iterable[Path], images: Iterable[Path]) -> dict:
    """What the cache was made from, cheaply: sha256 of each label file (None when absent),
    the number of images and their total bytes (one stat per image, no reading)."""
    sizes = [p.stat().st_size for p in images]
    labels = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
        for p in label_files
    }
    return {"labels_sha256": labels, "n_images": len(sizes), "image_bytes": sum(sizes)}


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two input fingerprints, in words; empty when they agree."""
    changes = []
    old_labels, new_labels = old.get("labels_sha256", {}), new["labels_sha256"]
    labels = sorted(
        k for k in set(old_labels) | set(new_labels) if old_labels.get(k) != new_labels.get(k)
    )
    if labels:
        changes.append(f"labels changed ({', '.join(labels)})")
    if old.get("n_images") != new["n_images"]:
        changes.append(f"number of images {old.get('n_images')} -> {new['n_images']}")
    if old.get("image_bytes") != new["image_bytes"]:
        changes.append(f"image bytes {old.get('image_bytes'):,} -> {new['image_bytes']:,}")
    return changes


def run_chunks(
    fn: Callable[[Any], Any], jobs: list, *, workers: int, part: Path
) -> Generator[Any, None, None]:
    """Yield `fn(job)` for every job as each finishes: in this process when `workers` <= 1,
    else in `workers` processes. A worker that dies (SIGKILL from the OOM killer, SIGBUS)
    ends the build with a CacheError naming `part`; what was yielded before is kept."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        for future in as_completed([pool.submit(fn, job) for job in jobs]):
            try:
                result = future.result()
            except BrokenProcessPool:
                raise CacheError(
                    f"{part}: a worker process died (killed by the system, e.g. out of memory, "
                    "or by a signal); finished chunks are saved: re-run the same command to resume"
                ) from None
            yield result
    finally:  # an error or Ctrl-C here: drop queued chunks, wait only for the running ones
        pool.shutdown(wait=True, cancel_futures=True)


def open_partial(part: Path, params: dict, *, shape: tuple[int, int, int], rebuild: bool) -> None:
    """Make sure PART holds an unfinished build for `params` (which include "n" and "inputs")
    with images.npy allocated on disk: reuse a matching one, refuse or discard (`rebuild`) one
    made otherwise, else start afresh. Checks the free space before allocating anything."""
    images = images_path(part)
    if (part / PARAMS).exists():
        old = current_params(json.loads((part / PARAMS).read_text()))
        why = _differs(old, params)
        if why and not rebuild:
            raise CacheError(
                f"{part}: an unfinished build {why} is here; pass --rebuild to discard it"
            )
        if why:
            shutil.rmtree(part)
        elif "inputs" not in old:  # made by a version before fingerprints: adopt it as it is
            print(f"resuming {part}, made before input fingerprints: inputs not checked")
            (part / PARAMS).write_text(json.dumps(params))
    if (part / PARAMS).exists():  # resuming: allocate what an older version left sparse
        check_space(part, needed=space_needed(shape[0], unallocated=unallocated_bytes(images)))
        allocate(images, part=part)
        return
    shutil.rmtree(part, ignore_errors=True)  # a start cut short before params.json
    npy_bytes = int(np.prod(shape)) + 128  # the pixels and the .npy header
    check_space(part, needed=space_needed(shape[0], unallocated=npy_bytes))
    part.mkdir(parents=True)
    try:
        np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=shape).flush()
        allocate(images, part=part)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)  # nothing done yet: leave no sparse file behind
        raise
    (part / PARAMS).write_text(json.dumps(params))


def _differs(old: dict, params: dict) -> str:
    """How an unfinished build's recorded `old` params differ from `params`, in words ("" when
    they agree); input fingerprints are compared only where both have one."""
    changes = fingerprint_changes(old["inputs"], params["inputs"]) if "inputs" in old else []
    if changes:
        return f"from other inputs ({'; '.join(changes)})"
    if {**old, "inputs": None} != {**params, "inputs": None}:
        return "with other parameters"
    return ""


def fill(
    part: Path,
    fn: Callable[[Any], list[dict]],
    *,
    jobs: list,
    done: dict[int, dict],
    workers: int,
    progress: bool,
    n: int,
) -> None:
    """Run the chunk jobs, adding each finished row's metadata to `done` and logging each
    finished chunk to PART/progress.jsonl (fsynced), so an interruption loses no chunk."""
    bar = progress_bar(
        total=n, initial=len(done), desc="preprocess", unit="img", disable=not progress
    )
    try:
        with (
            open(part / PROGRESS, "a") as log,
            closing(run_chunks(fn, jobs, workers=workers, part=part)) as results,
        ):
            for metas in results:
                for m in metas:
                    done[m["row"]] = m
                log.write(json.dumps(metas) + "\n")
                log.flush()
                os.fsync(log.fileno())
                bar.update(len(metas))
    except OSError as e:
        if e.errno in _FULL:
            raise CacheError(
                f"{part}: disk full while writing the cache; free space and re-run "
                "the same command to resume"
            ) from None
        raise
    finally:
        bar.close()


def read_progress(path: Path) -> dict[int, dict]:
    """Row -> metadata of every row a finished chunk logged, less the rows that could not be
    read (the user may have fixed the file since) and those logged without the original image
    size (`height`, `width`: a build begun by an older pneumolib): those are read again."""
    done: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                metas = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the interruption: redo that chunk
                continue
            done.update({m["row"]: m for m in metas})
    return {r: m for r, m in done.items() if "error" not in m and "height" in m}
