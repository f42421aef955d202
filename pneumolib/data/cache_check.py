"""Is a finished cache still whole? One check every command runs before it uses a cache.

`preprocess` records in stats.json the byte size of CACHE/images.npy (`images_bytes`) and the
SHA-256 of CACHE/index.csv (`index_sha256`); `verify_cache` compares both with the files as
they are now and refuses a cache that no longer matches with one `CacheDamaged` line naming
the file and the `preprocess --rebuild` command that makes it whole again. images.npy is
checked by size only: hashing gigabytes at every command would take minutes, and what happens
to it in practice (a copy to Drive cut short, a full disk, a sync that stopped) changes its
size. index.csv is small (a few MB for RSNA) and hashed whole, so a deleted or edited row shows.

A cache made before these records is accepted with a warning (its rows are still counted
against `n`): rebuilding a full RSNA cache takes long, and `--rebuild` adds the records.
Torch-free, like the rest of `data`.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from pneumolib.base.config import Config
from pneumolib.base.errors import PneumolibError
from pneumolib.data.cache_files import IMAGES, INDEX, STATS, images_path, index_path, stats_path
from pneumolib.data.cache_stats import CacheStats, read_stats, write_stats

__all__ = ["CacheDamaged", "cache_record", "damage", "reusable", "seal_cache", "verify_cache"]

# preprocess options written into the rebuild command when the cache was made with other values
_OPTIONS = (("split_rule", "--split", "split"), ("seed", "--seed", "seed"))
_FRACTIONS = (("val_frac", "--val-frac", "val_frac"), ("test_frac", "--test-frac", "test_frac"))


class CacheDamaged(PneumolibError, ValueError):
    """A cache whose files no longer match what `preprocess` recorded; the message (one line)
    names the file and the command that rebuilds it."""


def cache_record(cache: str | Path) -> dict[str, Any]:
    """What stats.json records of the cache files as they are now: `images_bytes` (size of
    images.npy) and `index_sha256` (of index.csv)."""
    return {
        "images_bytes": images_path(cache).stat().st_size,
        "index_sha256": hashlib.sha256(index_path(cache).read_bytes()).hexdigest(),
    }


def rebuild_command(cache: str | Path, stats: CacheStats) -> str:
    """The `preprocess --rebuild` command that remakes `cache` as it was made."""
    params, default = dict(stats.params or {}), Config()
    raw = params.get("source") or stats.source or "RAW"
    opts = [f"--raw {raw}", f"--out {cache}", f"--size {stats.size}"]
    for key, flag, field in (*_OPTIONS, *_FRACTIONS):
        if key in params and params[key] != getattr(default, field):
            opts.append(f"{flag} {params[key]}")
    return f"python -m pneumolib preprocess {' '.join(opts)} --rebuild"


def damaged_line(cache: str | Path, what: str, stats: CacheStats) -> str:
    """`CACHE/FILE: what; the cache is damaged: run ...` (the one form of every damage)."""
    return f"{Path(cache) / what}; the cache is damaged: run {rebuild_command(cache, stats)}"


def damage(cache: str | Path) -> str | None:
    """Why the finished cache `cache` no longer matches its stats.json (one line), or None."""
    cache = Path(cache)
    stats = read_stats(cache)
    for name, path in ((IMAGES, images_path(cache)), (INDEX, index_path(cache))):
        if not path.is_file():
            return damaged_line(cache, f"{name}: missing", stats)
    size = images_path(cache).stat().st_size
    if stats.images_bytes is not None and size != stats.images_bytes:
        what = f"{IMAGES}: {size:,} bytes, {STATS} recorded {stats.images_bytes:,}"
        return damaged_line(cache, what, stats)
    data = index_path(cache).read_bytes()
    rows = max(data.count(b"\n") - 1, 0)  # one header line; no field holds a newline
    if stats.index_sha256 is not None:
        if hashlib.sha256(data).hexdigest() != stats.index_sha256:
            was = f" of {stats.n:,} rows" if stats.n is not None else ""
            what = f"{INDEX}: {rows:,} rows, changed since {STATS} recorded its hash{was}"
            return damaged_line(cache, what, stats)
    elif stats.n is not None and rows != stats.n:  # an older cache: rows counted only
        return damaged_line(cache, f"{INDEX}: {rows:,} rows, {STATS} recorded {stats.n:,}", stats)
    return None


def verify_cache(cache: str | Path) -> CacheStats:
    """CACHE/stats.json, once the cache files are checked against it; a missing cache is a
    `FileNotFoundError`, a damaged one a `CacheDamaged` line (see the module docstring)."""
    cache = Path(cache)
    if not stats_path(cache).is_file():
        missing = index_path(cache) if not index_path(cache).is_file() else stats_path(cache)
        what = "no cache index" if missing.name == INDEX else "no cache statistics"
        raise FileNotFoundError(f"{missing}: {what}; run `python -m pneumolib preprocess` first")
    why = damage(cache)
    if why is not None:
        raise CacheDamaged(why)
    stats = read_stats(cache)
    if stats.images_bytes is None or stats.index_sha256 is None:
        warnings.warn(
            f"{stats_path(cache)}: made before pneumolib recorded file sizes and hashes, so "
            f"damage is not checked; {rebuild_command(cache, stats)} adds them",
            stacklevel=2,
        )
    return stats


def reusable(cache: str | Path, *, rebuild: bool) -> bool:
    """For `preprocess` on a finished cache: True when it is whole, False when it is damaged
    and `rebuild` was asked for; a damaged cache without `rebuild` is a `CacheDamaged` line."""
    why = damage(cache)
    if why is None or rebuild:
        return why is None
    raise CacheDamaged(why)


def seal_cache(cache: str | Path) -> CacheStats:
    """Record the cache files as they are now in its stats.json (for a cache built or edited by
    hand, as tests and benchmarks do); returns the new stats."""
    stats = read_stats(cache)
    sealed = CacheStats.from_dict({**stats.to_dict(), **cache_record(cache)})
    write_stats(sealed, stats_path(cache))
    return sealed
