"""pneumolib.data.dicom against the rules of the DICOM standard.

Each test writes its own small DICOM and computes the expected grey levels from the standard's
rule in the test itself: LUT output depth (PS3.3 C.11.2.1.1), sample bit depth, palettes
(C.7.6.3.1.5), YBR_FULL (C.7.6.3.1.2), pixel spacing; plus the flat-image safety net and the
one-line errors for multi-frame files and header values that are not numbers.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits

from pneumolib.data.dicom import (
    FLAT_FRACTION,
    FLAT_LEVELS,
    DicomError,
    check_informative,
    read_dicom,
)
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.synth import REALISM, phantom

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as cv2's RGB2GRAY


def base(tmp_path: Path, shape: tuple[int, int] = (64, 64)) -> pydicom.Dataset:
    """An uncompressed 8-bit MONOCHROME2 dataset (ramp pixels) to hand-edit into variants."""
    ramp = np.tile(np.linspace(0, 255, shape[1]).astype(np.uint8), (shape[0], 1))
    write_dicom(tmp_path / "base.dcm", ramp, patient_id="base", jpeg=False)
    return pydicom.dcmread(tmp_path / "base.dcm")


def save_read(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    ds.save_as(path)
    return read_dicom(path).pixels


def ramp12() -> np.ndarray:
    """Every 12-bit value 0..4095 once, as uint16 (64, 64)."""
    return np.arange(4096, dtype=np.uint16).reshape(64, 64)


def set_bits(ds: pydicom.Dataset, allocated: int, stored: int) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1


def assert_one_line(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    for word in words:
        assert word in msg, msg


# --- 1. VOI LUT Sequence: the LUT's own output depth maps to 0..255 ------------------------


@pytest.mark.parametrize(
    "entries, first, bits, ow",
    [
        (4096, 0, 8, False),  # 8-bit LUT on 12-bit data (was almost black)
        (4096, 0, 16, False),  # 16-bit LUT (was almost white)
        (2048, 1024, 16, False),  # first mapped value 1024: below -> first entry, above -> last
        (0, 0, 16, True),  # descriptor 0 = 65536 entries, stored as OW words
    ],
)
def test_voi_lut_output_depth_maps_to_0_255(
    tmp_path: Path, entries: int, first: int, bits: int, ow: bool
) -> None:
    n = entries or 65536
    top = 2**bits - 1
    span = min(n, 4096)  # a ramp over the LUT (or the 12-bit range): 0..top, then flat
    lut = np.rint(np.minimum(np.arange(n), span - 1) * top / (span - 1)).astype(np.uint16)
    stored = ramp12()
    ds = base(tmp_path)
    set_bits(ds, 16, 12)
    ds.PixelData = stored.tobytes()
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first, bits])  # LUT Descriptor
    if ow:
        item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    else:
        item.add_new(0x00283006, "US", lut.tolist())
    ds.VOILUTSequence = [item]
    got = save_read(ds, tmp_path / "voi.dcm").astype(int)
    # PS3.3 C.11.2.1.1, computed here: index = clip(value - first, 0, n - 1)
    out = lut[np.clip(stored.astype(int) - first, 0, n - 1)]
    expected = np.rint(out / top * 255)
    assert np.abs(got - expected).max() <= 1
    mid = got.ravel()[first + span // 2]
    assert abs(mid - 128) <= 1  # mid-grey stays mid-grey
    assert got.ravel()[-1] == 255 and got.ravel()[0] == 0


def test_window_that_saturates_everything_is_refused(tmp_path: Path) -> None:
    ds = base(tmp_path)
    set_bits(ds, 16, 12)
    ds.PixelData = (ramp12() // 4 + 3000).tobytes()  # 3000..4023
    ds.WindowCenter, ds.WindowWidth = 100, 50  # everything above the window: all white
    ds.save_as(tmp_path / "white.dcm")
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "white.dcm")
    assert_one_line(err, tmp_path / "white.dcm", "single grey level", "of 255")


# --- 2. colour deeper than 8 bits scales by BitsStored --------------------------------------


def colour12() -> np.ndarray:
    """(64, 64, 3) 12-bit RGB: a different ramp per channel, so channels cannot be confused."""
    v = ramp12().astype(np.int64)
    return np.stack([v, 4095 - v, (v * 7) % 4096], axis=-1)


def test_16bit_rgb_scales_by_bits_stored(tmp_path: Path) -> None:
    rgb = colour12()
    ds = base(tmp_path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    set_bits(ds, 16, 12)
    ds.PixelData = rgb.astype("<u2").tobytes()
    got = save_read(ds, tmp_path / "rgb16.dcm").astype(int)
    expected = np.rint(rgb / 4095 * 255) @ LUMA
    assert np.abs(got - expected).max() <= 1


def test_16bit_ybr_full_gives_its_luma(tmp_path: Path) -> None:
    rgb = colour12().astype(np.float64)
    # PS3.3 C.7.6.3.1.2 (YBR_FULL), for 12-bit samples: half range 2048
    y = rgb @ LUMA
    cb = rgb @ [-0.1687, -0.3313, 0.5] + 2048
    cr = rgb @ [0.5, -0.4187, -0.0813] + 2048
    ybr = np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 4095)
    ds = base(tmp_path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    set_bits(ds, 16, 12)
    ds.PixelData = ybr.astype("<u2").tobytes()
    got = save_read(ds, tmp_path / "ybr16.dcm").astype(int)
    assert np.abs(got - np.rint(y / 4095 * 255)).max() <= 1


# --- 3. fewer than 8 bits stored scale to the full range --------------------------------------


def test_1bit_packed_is_0_or_255(tmp_path: Path) -> None:
    bits = (np.indices((64, 64)).sum(axis=0) // 8 % 2).astype(np.uint8)  # 8-px checkerboard
    ds = base(tmp_path)
    set_bits(ds, 1, 1)
    ds.PixelData = pack_bits(bits)
    np.testing.assert_array_equal(save_read(ds, tmp_path / "b1.dcm"), bits * 255)


def test_4bit_in_8_allocated_scales_by_15(tmp_path: Path) -> None:
    stored = (np.arange(64 * 64) % 16).astype(np.uint8).reshape(64, 64)
    ds = base(tmp_path)
    set_bits(ds, 8, 4)
    ds.PixelData = stored.tobytes()
    got = save_read(ds, tmp_path / "b4.dcm")
    np.testing.assert_array_equal(got, np.rint(stored / 15 * 255).astype(np.uint8))


# --- 4. PALETTE COLOR: the palette is applied ---------------------------------------------


@pytest.mark.parametrize("depth", [8, 16])
def test_palette_color_is_applied(tmp_path: Path, depth: int) -> None:
    idx = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    i = np.arange(256)
    top = 2**depth - 1
    palette = {  # an inverted grey in red and green, a plain ramp in blue
        "Red": np.rint((255 - i) / 255 * top),
        "Green": np.rint((255 - i) / 255 * top),
        "Blue": np.rint(i / 255 * top),
    }
    ds = base(tmp_path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    dtype = "u1" if depth == 8 else "<u2"
    for k, lut in enumerate(palette.values()):  # red, green, blue
        ds.add_new(0x00281101 + k, "US", [256, 0, depth])  # descriptor
        ds.add_new(0x00281201 + k, "OW", lut.astype(dtype).tobytes())  # data
    ds.PixelData = idx.tobytes()
    got = save_read(ds, tmp_path / f"pal{depth}.dcm").astype(int)
    rgb8 = np.stack([palette[c][idx] / top * 255 for c in palette], axis=-1)
    assert np.abs(got - rgb8 @ LUMA).max() <= 1
    grey = 0.299 * (255 - idx) + 0.587 * (255 - idx) + 0.114 * idx  # index i -> mostly 255-i
    assert np.abs(got - grey).max() <= 1


# --- 5. pixel spacing that is not two positive numbers is None ---------------------------------


@pytest.mark.parametrize(
    "spacing, expected",
    [
        ([0.2, 0.3], (0.2, 0.3)),
        ([0, 0], None),
        ([0.168, 0], None),
        ([-0.2, -0.2], None),
        ([0.2], None),
    ],
)
def test_pixel_spacing(tmp_path: Path, spacing: list, expected: tuple | None) -> None:
    ds = base(tmp_path)
    ds.PixelSpacing = spacing
    ds.save_as(tmp_path / "ps.dcm")
    got = read_dicom(tmp_path / "ps.dcm").pixel_spacing
    assert got == (pytest.approx(expected) if expected else None)


def test_pixel_spacing_text_is_none(tmp_path: Path) -> None:
    path = patched(tmp_path, "PixelSpacing", "0.25\\0.2", b"abcd\\0.2")
    assert read_dicom(path).pixel_spacing is None


# --- 6. the flat-image safety net ---------------------------------------------------------------


def test_uniform_and_nearly_uniform_images_are_refused() -> None:
    with pytest.raises(DicomError, match=r"x\.dcm: almost a single grey level \(100\.0%"):
        check_informative(np.full((50, 40), 7, np.uint8), "x.dcm")
    img = np.full((100, 100), 200, np.uint8)
    img.flat[:50] = np.arange(50)  # 99.5% constant
    with pytest.raises(DicomError, match=r"99\.5% of pixels within 2 levels of 200"):
        check_informative(img, "x.dcm")


def test_the_rule_boundary() -> None:
    img = np.full((100, 100), 100, np.uint8)
    near = 100 + np.arange(9900) % (2 * FLAT_LEVELS + 1) - FLAT_LEVELS
    img.flat[:9900] = near  # 99% at 98..102
    img.flat[9900:] = 250
    with pytest.raises(DicomError):  # exactly FLAT_FRACTION within +-FLAT_LEVELS: refused
        check_informative(img, "edge.dcm")
    img.flat[9899] = 250  # one pixel fewer: passes
    assert FLAT_FRACTION == 0.99 and check_informative(img, "edge.dcm") is None


def test_gradient_and_phantoms_pass() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (16, 1))
    assert check_informative(ramp, "ramp.dcm") is None
    rng = np.random.default_rng(0)
    for k, realism in enumerate(REALISM.values()):
        for view, positive in (("AP", True), ("PA", False)):
            img, _ = phantom(
                rng, 128, view=view, positive=positive, marker=bool(k), realism=realism
            )
            check_informative(img, "phantom.dcm")


def test_uniform_file_is_refused_by_read_dicom(tmp_path: Path) -> None:
    write_dicom(tmp_path / "blank.dcm", np.full((64, 64), 128, np.uint8), patient_id="blank")
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "blank.dcm", size=32)
    assert_one_line(err, tmp_path / "blank.dcm", "single grey level", "window/LUT")


# --- 7. one-line errors: multi-frame, header values that are not numbers ---------------------


def test_multi_frame_is_refused_in_one_line(tmp_path: Path) -> None:
    ds = base(tmp_path)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.save_as(tmp_path / "frames.dcm")
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "frames.dcm", size=32)
    assert_one_line(err, tmp_path / "frames.dcm", "3 frames", "multi-frame")


def patched(tmp_path: Path, keyword: str, placeholder: str, raw: bytes) -> Path:
    """Write base() with `keyword` = placeholder (even length), then swap its value bytes for
    `raw` (same length): pydicom will not hold an IS/DS that is not a number, but a file can."""
    ds = base(tmp_path)
    setattr(ds, keyword, placeholder)
    elem = ds[keyword]
    ds.save_as(tmp_path / "good.dcm")
    value = placeholder.encode()
    assert len(value) == len(raw) and len(raw) % 2 == 0
    head = struct.pack("<HH", elem.tag.group, elem.tag.elem) + elem.VR.encode()
    head += struct.pack("<H", len(value))
    data = (tmp_path / "good.dcm").read_bytes()
    assert data.count(head + value) == 1
    (tmp_path / "bad.dcm").write_bytes(data.replace(head + value, head + raw))
    return tmp_path / "bad.dcm"


@pytest.mark.parametrize(
    "keyword, placeholder, raw",
    [
        ("NumberOfFrames", "11", b"1A"),
        ("WindowCenter", "12", b"ab"),
        ("RescaleSlope", "1.25", b"1,25"),
    ],
)
def test_header_value_not_a_number(
    tmp_path: Path, keyword: str, placeholder: str, raw: bytes
) -> None:
    path = patched(tmp_path, keyword, placeholder, raw)
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    assert_one_line(err, path, f"header {keyword} = '{raw.decode()}' is not a number")


@pytest.mark.parametrize("keyword", ["Rows", "BitsStored"])
def test_header_with_wrong_vr_text(tmp_path: Path, keyword: str) -> None:
    ds = base(tmp_path)
    ds.add_new(ds[keyword].tag, "LO", "abc")  # a US field written as text
    ds.save_as(tmp_path / "text.dcm")
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "text.dcm")
    assert_one_line(err, tmp_path / "text.dcm", f"header {keyword} = 'abc' is not a number")


# --- the JPEG fast path honours a window in the header ------------------------------------------


@pytest.mark.parametrize("jpeg", [False, True])
def test_window_applies_to_8bit_jpeg_and_raw_alike(tmp_path: Path, jpeg: bool) -> None:
    ramp = np.tile(np.arange(128, dtype=np.uint8), (64, 1))  # 0..127, 8 bits stored
    write_dicom(tmp_path / "w8.dcm", ramp, patient_id="w8", jpeg=jpeg, quality=100)
    ds = pydicom.dcmread(tmp_path / "w8.dcm")
    ds.WindowCenter, ds.WindowWidth = 64, 128
    got = save_read(ds, tmp_path / "w8w.dcm").astype(int)
    # PS3.3 C.11.2.1.2.1, linear window onto 0..255 (the 8-bit output range)
    expected = np.clip(((ramp - 63.5) / 127 + 0.5) * 255, 0, 255)
    assert np.abs(got - expected).mean() <= (1.0 if jpeg else 0.5)
    assert np.abs(got - expected).max() <= (4 if jpeg else 1)
