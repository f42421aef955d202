"""The cache folder's file names (output of `preprocess`), declared once; torch-free.

CACHE/images.npy (uint8 (N, S, S)), CACHE/index.csv (one row per patient), CACHE/stats.json
(train pixel mean/std, size, provenance) and CACHE/errors.csv (unreadable files). An
unfinished build lives in CACHE.partial/ (with params.json) until it is renamed into place.
"""

from __future__ import annotations

from pathlib import Path

IMAGES = "images.npy"
INDEX = "index.csv"
STATS = "stats.json"
ERRORS = "errors.csv"
PARAMS = "params.json"  # in CACHE.partial/: what the unfinished build was started with
CACHE_FILES = (IMAGES, INDEX, STATS)  # present in every complete cache
# Build parameters a cache may record under another name, and the name they are compared by.
_PARAM_ALIASES = {"allow_any_modality": "allow_any_input"}


def current_params(params: dict) -> dict:
    """A cache's recorded build parameters, each under the name a build compares it by."""
    return {_PARAM_ALIASES.get(k, k): v for k, v in params.items()}


def images_path(cache: str | Path) -> Path:
    """CACHE/images.npy."""
    return Path(cache) / IMAGES


def index_path(cache: str | Path) -> Path:
    """CACHE/index.csv."""
    return Path(cache) / INDEX


def stats_path(cache: str | Path) -> Path:
    """CACHE/stats.json."""
    return Path(cache) / STATS


def errors_path(cache: str | Path) -> Path:
    """CACHE/errors.csv."""
    return Path(cache) / ERRORS


def partial_path(cache: str | Path) -> Path:
    """CACHE.partial: the folder a build fills before it is renamed to CACHE."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".partial")
