"""pneumolib.data.dicom: every stored form of a radiograph decodes to the same display image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from pneumolib.data.dicom import (
    REDUCED_DECODE_TOLERANCE,
    DicomError,
    parse_age,
    read_dicom,
)
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.synth import phantom

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
REAL_JPEG = "cxr_pa_monochrome2_jpeg.dcm"


def image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (h, w) with the full 0..255 range and no symmetry (so inversions show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = (xx * 255 // max(w - 1, 1) + rng.integers(0, 30, (h, w))) % 256
    img[0, 0], img[-1, -1] = 0, 255
    return img.astype(np.uint8)


def raw_dataset(tmp_path: Path, pixels: np.ndarray) -> pydicom.Dataset:
    """An uncompressed RSNA-style dataset to hand-edit into other variants."""
    write_dicom(
        tmp_path / "base.dcm", pixels, patient_id="base", sex="F", age=30, view="AP", jpeg=False
    )
    return pydicom.dcmread(tmp_path / "base.dcm")


def within_tolerance(reduced: np.ndarray, full: np.ndarray) -> None:
    diff = np.abs(reduced.astype(np.float64) - full.astype(np.float64))
    assert reduced.shape == full.shape
    assert diff.mean() <= REDUCED_DECODE_TOLERANCE["mean_abs"], diff.mean()
    assert np.percentile(diff, 99) <= REDUCED_DECODE_TOLERANCE["p99_abs"]


# --- the real radiographs (skipped where ../shared/data/real-dicom is absent) -------------


@pytest.fixture(scope="module")
def real_p(real_dicom: Path) -> np.ndarray:
    """P: the 1024x1024 uint8 image of the JPEG original."""
    return read_dicom(real_dicom / REAL_JPEG).pixels


@pytest.mark.parametrize(
    "name, tol",
    [
        ("cxr_pa_monochrome2_raw.dcm", 0),
        ("cxr_pa_monochrome1_raw.dcm", 0),
        ("cxr_pa_12bit_window.dcm", 1),
    ],
)
def test_real_variants_decode_to_the_jpeg_image(
    real_dicom: Path, real_p: np.ndarray, name: str, tol: int
) -> None:
    assert real_p.shape == (1024, 1024) and real_p.dtype == np.uint8
    assert real_p.std() > 20  # a real radiograph, not a blank decode
    got = read_dicom(real_dicom / name).pixels
    assert got.shape == real_p.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - real_p.astype(int)).max() <= tol


def test_real_relabelled_monochrome1_is_exact_inverse(real_dicom: Path, real_p: np.ndarray) -> None:
    got = read_dicom(real_dicom / "cxr_pa_monochrome1_jpeg_relabelled.dcm").pixels
    np.testing.assert_array_equal(got, 255 - real_p)


@pytest.mark.parametrize(
    "name",
    [
        "cxr_pa_monochrome2_jpeg.dcm",
        "cxr_pa_monochrome2_raw.dcm",
        "cxr_pa_monochrome1_raw.dcm",
        "cxr_pa_12bit_window.dcm",
        "cxr_pa_monochrome1_jpeg_relabelled.dcm",
    ],
)
def test_real_header_fields(real_dicom: Path, name: str) -> None:
    d = read_dicom(real_dicom / name)
    assert (d.sex, d.age, d.view) == ("M", 62, "PA")
    assert d.meta() == {"sex": "M", "age": 62, "view": "PA"}
    assert d.pixel_spacing == pytest.approx((0.168, 0.168))
    assert (d.rows, d.columns) == (1024, 1024)


@pytest.mark.parametrize("size", [256, 224])
def test_real_reduced_decode_matches_full_decode_and_area_resize(
    real_dicom: Path, real_p: np.ndarray, size: int
) -> None:
    expected = cv2.resize(real_p, (size, size), interpolation=cv2.INTER_AREA)
    d = read_dicom(real_dicom / REAL_JPEG, size=size)
    assert d.pixels.shape == (size, size)
    assert d.scale == pytest.approx(size / 1024) and d.offset == (0.0, 0.0)
    within_tolerance(d.pixels, expected)
    # reduced=False is exactly the full decode + area resize
    full = read_dicom(real_dicom / REAL_JPEG, size=size, reduced=False).pixels
    np.testing.assert_array_equal(full, expected)


# --- files the package generates -------------------------------------------------------


@pytest.mark.parametrize("jpeg", [True, False])
def test_write_read_round_trip(tmp_path: Path, jpeg: bool) -> None:
    img, _ = phantom(np.random.default_rng(3), 96, view="AP", positive=True)
    path = tmp_path / "x.dcm"
    write_dicom(path, img, patient_id="pid-1", sex="F", age=71, view="AP", jpeg=jpeg)
    ds = pydicom.dcmread(path)
    syntax = JPEG_BASELINE if jpeg else pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.PatientID == "pid-1"
    d = read_dicom(path)
    assert d.pixels.dtype == np.uint8 and d.pixels.shape == (96, 96)
    assert (d.sex, d.age, d.view, d.pixel_spacing) == ("F", 71, "AP", (0.168, 0.168))
    diff = np.abs(d.pixels.astype(int) - img.astype(int))
    if jpeg:  # lossy at quality 95: close, not equal
        assert diff.mean() < 2.0 and diff.max() < 40
    else:
        assert diff.max() == 0


def test_monochrome1_raw_is_inverted_back(tmp_path: Path) -> None:
    img = image()
    ds = raw_dataset(tmp_path, img)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = (255 - img).tobytes()
    ds.save_as(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(read_dicom(tmp_path / "m1.dcm").pixels, img)


def _to_16bit(ds: pydicom.Dataset, stored: np.ndarray, bits: int = 12) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelData = stored.astype(np.uint16).tobytes()


def test_16bit_with_window_maps_the_window_to_0_255(tmp_path: Path) -> None:
    img = image()
    ds = raw_dataset(tmp_path, img)
    _to_16bit(ds, img.astype(np.uint16) * 16 + 8)  # as the real 12-bit file
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(tmp_path / "w.dcm")
    got = read_dicom(tmp_path / "w.dcm").pixels
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - img.astype(int)).max() <= 1


def test_16bit_narrow_window_clips(tmp_path: Path) -> None:
    stored = np.tile(np.linspace(0, 4000, 64), (64, 1))
    ds = raw_dataset(tmp_path, np.zeros((64, 64), np.uint8))
    _to_16bit(ds, stored)
    ds.WindowCenter, ds.WindowWidth = 2000, 1000  # 1500..2500 -> 0..255
    ds.save_as(tmp_path / "n.dcm")
    got = read_dicom(tmp_path / "n.dcm").pixels
    assert got[0, stored[0] < 1400].max() == 0
    assert got[0, stored[0] > 2600].min() == 255
    mid = got[0, (stored[0] > 1600) & (stored[0] < 2400)]
    assert np.all((mid > 0) & (mid < 255)) and np.all(np.diff(mid.astype(int)) >= 0)


def test_16bit_without_window_uses_min_max(tmp_path: Path) -> None:
    img = image()
    stored = img.astype(np.uint16) * 10 + 100  # 100..2650 of 12 bits
    ds = raw_dataset(tmp_path, img)
    _to_16bit(ds, stored)
    ds.save_as(tmp_path / "mm.dcm")
    got = read_dicom(tmp_path / "mm.dcm").pixels
    expected = np.rint((stored - 100.0) / (2650 - 100) * 255)
    assert got.min() == 0 and got.max() == 255
    assert np.abs(got - expected).max() <= 1


def test_rgb_collapses_to_grey(tmp_path: Path) -> None:
    img = image()
    rgb = np.stack([img, img, img], axis=-1)
    rgb[5, 7] = (255, 0, 0)  # one coloured pixel: luminance weights, not a channel pick
    ds = raw_dataset(tmp_path, img)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "rgb.dcm")
    got = read_dicom(tmp_path / "rgb.dcm").pixels
    assert got.shape == img.shape and got.dtype == np.uint8
    mask = np.ones(img.shape, bool)
    mask[5, 7] = False
    np.testing.assert_array_equal(got[mask], img[mask])
    assert abs(int(got[5, 7]) - round(0.299 * 255)) <= 1


@pytest.mark.parametrize("hw", [(48, 64), (64, 48)])
@pytest.mark.parametrize("size", [32, 64])
def test_non_square_is_letterboxed_and_mapping_holds(
    tmp_path: Path, hw: tuple[int, int], size: int
) -> None:
    h, w = hw
    img = np.full((h, w), 100, np.uint8)
    x0, y0, side = 16, 24, 8  # a bright block [16, 24) x [24, 32) in original pixels
    img[y0 : y0 + side, x0 : x0 + side] = 250
    write_dicom(tmp_path / "r.dcm", img, patient_id="r", jpeg=False)
    d = read_dicom(tmp_path / "r.dcm", size=size)
    assert d.pixels.shape == (size, size) and (d.rows, d.columns) == (h, w)
    s, (ox, oy) = d.scale, d.offset
    assert s == pytest.approx(size / 64)
    pad = (64 - min(h, w)) / 2 * s  # centred padding, in output pixels
    assert (ox, oy) == pytest.approx((pad, 0.0) if h > w else (0.0, pad))
    # the block lands where the mapping says
    bx0, by0, bside = round(x0 * s + ox), round(y0 * s + oy), round(side * s)
    assert d.pixels[by0 : by0 + bside, bx0 : bx0 + bside].min() >= 240
    assert d.pixels[by0 - 1, bx0 : bx0 + bside].max() <= 110
    assert d.pixels[by0 : by0 + bside, bx0 + bside].max() <= 110
    # the padding is black, the image area is the image's grey
    band = round(pad)
    if h < w:
        assert d.pixels[:band].max() == 0 and d.pixels[size - band :].max() == 0
        assert d.pixels[band, 0] == 100
    else:
        assert d.pixels[:, :band].max() == 0 and d.pixels[:, size - band :].max() == 0
        assert d.pixels[0, band] == 100


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # RSNA's bare '62' included
@pytest.mark.parametrize("text, years", [("062Y", 62), ("62", 62), ("abc", None)])
def test_age_in_header(tmp_path: Path, text: str, years: int | None) -> None:
    ds = raw_dataset(tmp_path, image())
    ds.PatientAge = text
    ds.save_as(tmp_path / "age.dcm")
    assert read_dicom(tmp_path / "age.dcm").age == years


@pytest.mark.parametrize(
    "value, years",
    [
        ("062Y", 62),
        ("62", 62),
        (62, 62),
        (" 7y ", 7),
        ("018M", 0),
        ("", None),
        ("junk", None),
        (None, None),
        ("62.5", None),
    ],
)
def test_parse_age(value: object, years: int | None) -> None:
    assert parse_age(value) == years


def test_reduced_decode_on_generated_phantom(tmp_path: Path) -> None:
    img, _ = phantom(np.random.default_rng(0), 512, view="AP", positive=True)
    write_dicom(tmp_path / "p.dcm", img, patient_id="p")
    full = read_dicom(tmp_path / "p.dcm").pixels
    expected = cv2.resize(full, (128, 128), interpolation=cv2.INTER_AREA)
    within_tolerance(read_dicom(tmp_path / "p.dcm", size=128).pixels, expected)
    np.testing.assert_array_equal(
        read_dicom(tmp_path / "p.dcm", size=128, reduced=False).pixels, expected
    )


# --- bad input ------------------------------------------------------------------------------


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for word in words:
        assert word in msg.lower()


@pytest.mark.parametrize("jpeg", [True, False])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_file(tmp_path: Path, jpeg: bool, keep: float) -> None:
    write_dicom(tmp_path / "whole.dcm", image(), patient_id="t", jpeg=jpeg)
    data = (tmp_path / "whole.dcm").read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DicomError) as err:
        read_dicom(bad)
    assert_one_line_naming(err, bad)


def test_garbage_bytes(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(DicomError) as err:
        read_dicom(bad, size=32)
    assert_one_line_naming(err, bad, "not a readable dicom")


def test_corrupt_jpeg_frame(tmp_path: Path) -> None:
    ds = raw_dataset(tmp_path, image())
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
    ds.PixelData = pydicom.encaps.encapsulate([np.random.default_rng(2).bytes(2000)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "corrupt.dcm")
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "corrupt.dcm", size=32)
    assert_one_line_naming(err, tmp_path / "corrupt.dcm", "jpeg")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "nope.dcm")
    assert_one_line_naming(err, tmp_path / "nope.dcm", "not found")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = raw_dataset(tmp_path, image())
    del ds.PixelData
    ds.save_as(tmp_path / "header_only.dcm")
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "header_only.dcm")
    assert_one_line_naming(err, tmp_path / "header_only.dcm", "pixel data")
