"""Shared fixtures: a tiny demo RSNA folder and its cache (session-wide), the real DICOMs."""

from __future__ import annotations

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
