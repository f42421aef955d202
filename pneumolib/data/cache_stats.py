"""CACHE/stats.json as a typed record: `CacheStats` (torch-free, like the rest of `data`).

`preprocess` writes it, `train`, `evaluate`, `cam` and `predict` read it (a checkpoint keeps
the part a model needs: `for_checkpoint`). `from_dict` reads any stats.json pneumolib has
written: a key an older version did not write is None, a key this version does not know is
kept in `extra`; `to_dict` writes back exactly the keys that were read, in the order
`preprocess` writes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pneumolib.data.cache_files import stats_path


@dataclass(frozen=True)
class CacheStats:
    """The cache's pixel statistics and how it was made (CACHE/stats.json)."""

    mean: float  # of train pixels scaled to [0, 1]
    std: float  # of the same pixels
    size: int  # side of the square images in pixels
    n: int | None = None  # patients (rows of images.npy)
    n_train: int | None = None  # patients in the train split
    positive_rate: float | None = None  # share of patients with pneumonia
    source: str | None = None  # the raw folder it was made from
    synthetic: bool | None = None  # made from pneumolib's phantoms (None: made before the record)
    split_rule: str | None = None  # "stratified", "course", ...
    seed: int | None = None  # of the split
    package_version: str | None = None  # pneumolib that made it
    created: str | None = None  # ISO time, UTC
    params: Mapping[str, Any] | None = None  # what `build_cache` was asked for
    inputs: Mapping[str, Any] | None = None  # fingerprints of the label files and images
    images_bytes: int | None = None  # size of images.npy as written (None: made before the record)
    index_sha256: str | None = None  # of index.csv as written (`cache_check` compares both)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheStats:
        """A stats.json (or a checkpoint's `stats`) as read; keys it lacks are None."""
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("mean", "std", "size") if k not in d]
        if missing:
            raise ValueError(f"cache stats without {', '.join(missing)}: {sorted(d)}")
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**{k: v for k, v in d.items() if k in known}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict: the known keys that are set, in stats.json's order, then
        `extra`; `to_dict(from_dict(d)) == d` for a stats.json pneumolib wrote."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {k: v for k, v in out.items() if v is not None} | dict(self.extra)

    def for_checkpoint(self) -> dict[str, Any]:
        """What a checkpoint keeps: mean, std, size and the synthetic flag (None when the
        cache was made before the flag), so `predict` can warn about a demo model."""
        return {"mean": self.mean, "std": self.std, "size": self.size, "synthetic": self.synthetic}


def read_stats(cache: str | Path) -> CacheStats:
    """CACHE/stats.json -> `CacheStats`."""
    return CacheStats.from_dict(json.loads(stats_path(cache).read_text()))


def write_stats(stats: CacheStats, path: str | Path) -> None:
    """`stats` to `path` as stats.json (indent 2), exactly as `preprocess` has always written it."""
    Path(path).write_text(json.dumps(stats.to_dict(), indent=2))
