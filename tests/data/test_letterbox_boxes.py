"""Box geometry between an original film and its cache image (`data.letterbox`), and the
original size the cache records for each image (index.csv `height`, `width`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.labels import (
    ASSUMED_SIZE,
    IMAGES_DIR,
    LABELS_CSV,
    load_labels,
    original_sizes,
    read_index,
)
from pneumolib.data.letterbox import boxes_to_cache, boxes_to_original, letterbox
from pneumolib.data.preprocess import build_cache

BOXES = [[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 5.5, 7.25]]


@pytest.mark.parametrize(("height", "width"), [(300, 200), (200, 300), (256, 256), (1024, 1024)])
def test_boxes_round_trip(height: int, width: int) -> None:
    cached = boxes_to_cache(BOXES, height=height, width=width, size=64)
    back = boxes_to_original(cached, height=height, width=width, size=64)
    np.testing.assert_allclose(back, BOXES, atol=1e-9)
    scale = 64 / max(height, width)
    np.testing.assert_allclose(cached[:, 2:], np.asarray(BOXES)[:, 2:] * scale)
    # the shorter side is centred: portrait films shift x, landscape films shift y
    shift = cached[:, :2] - np.asarray(BOXES)[:, :2] * scale
    assert ((shift[:, 0] > 0) == (width < height)).all()
    assert ((shift[:, 1] > 0) == (height < width)).all()


@pytest.mark.parametrize(("height", "width"), [(240, 160), (160, 240)])
def test_boxes_follow_the_letterboxed_pixels(height: int, width: int) -> None:
    """A bright rectangle in the original lands where `boxes_to_cache` puts its box."""
    img = np.zeros((height, width), np.uint8)
    box = [40, 60, 80, 48]  # x, y, w, h
    img[60:108, 40:120] = 255
    out, scale, (ox, oy) = letterbox(img, 80, (height, width))
    x, y, w, h = boxes_to_cache([box], height=height, width=width, size=80)[0]
    assert scale == pytest.approx(80 / 240)
    assert (x, y, w, h) == pytest.approx((40 * scale + ox, 60 * scale + oy, 80 * scale, 48 * scale))
    ys, xs = np.nonzero(out > 127)
    assert xs.min() == pytest.approx(x, abs=1) and xs.max() + 1 == pytest.approx(x + w, abs=1)
    assert ys.min() == pytest.approx(y, abs=1) and ys.max() + 1 == pytest.approx(y + h, abs=1)


def test_empty_boxes_convert_to_an_empty_array() -> None:
    assert boxes_to_original([], height=10, width=20, size=8).shape == (0, 4)


def test_old_index_assumes_the_rsna_size_with_one_note() -> None:
    old = pd.DataFrame({"patientId": ["a", "b"], "boxes": [[], []]})
    h, w, note = original_sizes(old, where="CACHE/index.csv")
    assert list(h) == list(w) == [ASSUMED_SIZE] * 2
    assert note is not None and "CACHE/index.csv" in note and "\n" not in note
    new = old.assign(height=[300, 200], width=[200, 300])
    h, w, note = original_sizes(new)
    assert list(h) == [300, 200] and list(w) == [200, 300] and note is None


def _film(height: int, width: int, box: list[float], seed: int) -> np.ndarray:
    """Noise with a bright rectangle at `box` (original pixels)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 90, (height, width), dtype=np.uint8)
    x, y, w, h = (int(v) for v in box)
    img[y : y + h, x : x + w] = 250
    return img


def test_non_square_dicoms_get_their_size_and_boxes(demo_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    labels = load_labels(raw / LABELS_CSV)
    pos = labels[labels.target == 1].iloc[0]
    neg = labels[labels.target == 0].iloc[0]
    box = pos.boxes[0]  # in the 128 px film's pixels: kept inside the portrait film below
    write_dicom(raw / IMAGES_DIR / f"{pos.patientId}.dcm", _film(192, 128, box, 0),
                patient_id=pos.patientId)  # fmt: skip
    write_dicom(raw / IMAGES_DIR / f"{neg.patientId}.dcm", _film(128, 160, [0, 0, 1, 1], 1),
                patient_id=neg.patientId)  # fmt: skip
    cache = build_cache(raw, tmp_path / "cache", size=32, workers=1, progress=False)
    idx = read_index(cache).set_index("patientId")
    assert (idx.loc[pos.patientId, ["height", "width"]] == [192, 128]).all()
    assert (idx.loc[neg.patientId, ["height", "width"]] == [128, 160]).all()
    others = idx.drop(index=[pos.patientId, neg.patientId])
    assert (others["height"] == 128).all() and (others["width"] == 128).all()
    got = idx.loc[pos.patientId, "boxes"][0]
    want = boxes_to_cache([box], height=192, width=128, size=32)[0]
    assert got == pytest.approx(list(want), abs=0.01)
    assert got[0] > box[0] * 32 / 192 + 1  # the portrait film is centred: x moved right
    back = boxes_to_original([got], height=192, width=128, size=32)[0]
    assert back == pytest.approx(box, abs=0.05)
    # and the cache image is bright where the converted box says
    images = np.load(cache / "images.npy")
    x, y, w, h = (round(v) for v in got)
    inside = images[idx.loc[pos.patientId, "row"]][y + 1 : y + h - 1, x + 1 : x + w - 1]
    assert inside.size and inside.mean() > 200


def test_a_cache_without_sizes_is_still_whole_and_reused(
    demo_raw: Path, demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cache whose index.csv lacks `height`, `width` (as older builds wrote it, with its hash
    recorded) passes the damage check, is reused by the same build, and reads as 1024 px."""
    from pneumolib.data.cache_check import seal_cache, verify_cache

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    index = pd.read_csv(cache / "index.csv", dtype=str, keep_default_na=False)
    index.drop(columns=["height", "width"]).to_csv(cache / "index.csv", index=False)
    seal_cache(cache)
    verify_cache(cache)
    capsys.readouterr()
    assert build_cache(demo_raw, cache, size=64, workers=1, seed=0, progress=False) == cache
    assert "complete and matches" in capsys.readouterr().out
    h, w, note = original_sizes(read_index(cache), where=cache / "index.csv")
    assert (h == ASSUMED_SIZE).all() and (w == ASSUMED_SIZE).all() and note is not None
