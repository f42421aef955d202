"""Shared fixtures: a tiny demo RSNA folder and its cache (session-wide), the real DICOMs, and
the briefly trained runs several test files read (trained once per session; read-only: a test
that writes into a run copies it first with shutil.copytree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pneumolib.data.preprocess import build_cache
from pneumolib.data.synth import make_demo_data

# Real radiographs (torchxrayvision fixtures + pydicom variants, see its README.md). CI lays
# shared/ beside the checkout; a user's own clone does not have it, so tests skip there.
# Read in place, never copied into the project.
REAL_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dicom"
REAL_JPEG = "cxr_pa_monochrome2_jpeg.dcm"

DEMO_N, DEMO_SIZE, DEMO_SEED, CACHE_SIZE = 60, 128, 0, 64

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` the two workers share the 2 cores: one math thread each (torch reads
    # this when it is first imported; subprocesses inherit it), instead of two each fighting
    # over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For `pytest -n 2 --dist loadgroup` (the README's test command): each test file is its own
    group, so one worker runs it and builds its module fixtures once (notebooks/conftest.py
    groups the notebooks)."""
    for item in items:
        path = item.nodeid.split("::")[0]
        if path.startswith("tests/"):
            item.add_marker(pytest.mark.xdist_group(path))


@pytest.fixture(scope="session")
def real_dicom() -> Path:
    """The folder of real DICOMs; skips the test (saying why) where it is absent."""
    if not (REAL_DICOM / REAL_JPEG).is_file():
        pytest.skip(
            f"real DICOM fixtures not found at {REAL_DICOM} (CI lays shared/ beside the repo)"
        )
    return REAL_DICOM


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RSNA-shaped folder of 60 phantom DICOMs, 128x128, seed 0. Treat as read-only."""
    out = tmp_path_factory.mktemp("demo_raw") / "raw"
    return make_demo_data(out, n=DEMO_N, size=DEMO_SIZE, seed=DEMO_SEED)


@pytest.fixture(scope="session")
def demo_cache(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache of `demo_raw` at 64x64 (stratified split, seed 0). Treat as read-only."""
    out = tmp_path_factory.mktemp("demo_cache") / "cache"
    return build_cache(demo_raw, out, size=CACHE_SIZE, workers=1, seed=0, progress=False)


@pytest.fixture(scope="session")
def demo_run(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset trained briefly on `demo_cache`: binary, 64 px, 2 epochs. The run folder
    (best.pt, last.pt, config.json, metrics.csv), not evaluated. Read-only: copy to write."""
    from pneumolib.base.config import demo_config
    from pneumolib.train.loop import fit

    d = tmp_path_factory.mktemp("demo_run")
    cfg = demo_config(d, cache=str(demo_cache), out=str(d / "run"), workers=0)
    fit(cfg.replace(cache_size=64, image_size=64, epochs=2), progress=False)
    return d / "run"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A demo run trained briefly (2 epochs) on 160 phantoms (seed 5) at 64 px, with its raw
    DICOM folder and cache: the run predict and evaluate are tested on. Read-only."""
    from pneumolib.base.config import demo_config
    from pneumolib.train.loop import fit

    d = tmp_path_factory.mktemp("small_run")
    raw = make_demo_data(d / "raw", n=160, size=128, seed=5)
    cache = build_cache(raw, d / "cache", size=64, workers=1, progress=False)
    cfg = demo_config(
        d, cache=str(cache), out=str(d / "run"), workers=0, cache_size=64, image_size=64
    )
    fit(cfg.replace(epochs=2), progress=False)
    return {"ckpt": d / "run" / "best.pt", "run": d / "run", "raw": raw, "cache": cache}
