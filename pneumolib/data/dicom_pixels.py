"""Colour samples of a DICOM -> grey, and how much real colour they hold.

`colour_to_grey` turns RGB into luma, `palette_rgb` applies a PALETTE COLOR lookup table in the
file's own byte order (pydicom's `apply_color_lut` reads a big-endian table's 16-bit entries in
the machine's order), `ybr_rgb` undoes YBR_FULL, and `chroma` measures the colour that
`film.film_problem` judges: a chest film is greyscale.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut

from pneumolib.data.dicom_checks import DicomError

# chroma: at most this many pixels are looked at (an even grid), enough for a 99th percentile
_CHROMA_SAMPLES = 1_000_000
CHROMA_PERCENTILE = 99  # robust to a coloured marker or caption under 1% of the image


def scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned samples of `bits` bits, 0..2**bits - 1 -> uint8 0..255 (rounded)."""
    if bits == 8 and arr.dtype == np.uint8:
        return arr
    top = 2**bits - 1
    x = np.clip(arr, 0, top).astype(np.float32) * np.float32(255.0 / top)
    return np.rint(x).astype(np.uint8)


def colour_to_grey(rgb: np.ndarray, bits: int) -> np.ndarray:
    """RGB (H, W, 3) of `bits` bits per sample -> uint8 grey (luma 0.299/0.587/0.114)."""
    rgb8 = scale_bits(np.asarray(rgb), bits)
    return cv2.cvtColor(np.ascontiguousarray(rgb8[..., :3]), cv2.COLOR_RGB2GRAY)


def chroma(rgb: np.ndarray, bits: int) -> float:
    """Real colour in an RGB (H, W, 3) image of `bits` bits per sample, on a 0..1 scale: the
    99th percentile over pixels of (largest - smallest channel) / (2**bits - 1). 0 for grey
    saved as RGB; a few hundredths for JPEG noise in one; tenths for a photograph."""
    rgb = np.asarray(rgb)
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / _CHROMA_SAMPLES))))
    x = rgb[::step, ::step, :3].astype(np.float32)
    spread = x.max(axis=-1) - x.min(axis=-1)  # (h, w)
    if spread.size == 0:
        return 0.0
    return float(np.percentile(spread, CHROMA_PERCENTILE)) / float(2**bits - 1)


def ybr_rgb(ybr: np.ndarray, bits: int) -> np.ndarray:
    """YBR_FULL samples (H, W, 3) of `bits` bits -> RGB float32 on the same scale (PS3.3
    C.7.6.3.1.2, the JPEG/JFIF equations), unclipped."""
    x = np.asarray(ybr, np.float32)
    half = np.float32(2 ** (bits - 1))
    y, cb, cr = x[..., 0], x[..., 1] - half, x[..., 2] - half
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def palette_rgb(indices: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, int]:
    """PALETTE COLOR indices (H, W) -> (RGB (H, W, 3) uint8/uint16, bits per entry).

    PS3.3 C.7.6.3.1.5: Descriptor = (entries, 0 meaning 65536; first mapped index; bits per
    entry); indices below the first mapped one take the first entry, past the end the last.
    LUT data stored as bytes (OW) is read in the file's byte order. Segmented palettes are left
    to pydicom, which reads their byte order correctly.
    """
    data = [ds.get(f"{c}PaletteColorLookupTableData") for c in ("Red", "Green", "Blue")]
    if any(d is None for d in data):  # segmented, or missing (pydicom names what is wrong)
        rgb = apply_color_lut(indices, ds)[..., :3]
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return rgb, max(depth, int(rgb.max()).bit_length())
    entries, first, depth = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    entries = entries or 65536
    little = getattr(ds, "original_encoding", (None, True))[1] is not False
    luts = [_lut_values(d, entries, little=little) for d in data]
    if len({len(lut) for lut in luts}) != 1:
        raise ValueError("the red, green and blue palettes differ in length")
    idx = np.clip(np.asarray(indices, np.int64) - first, 0, len(luts[0]) - 1)
    rgb = np.stack([lut[idx] for lut in luts], axis=-1)
    return rgb, max(depth, int(rgb.max()).bit_length())  # 8-bit entries in 16-bit words


def _lut_values(data: object, entries: int, *, little: bool) -> np.ndarray:
    """One palette's entries: bytes of 8- or 16-bit words in the file's order, or numbers."""
    if isinstance(data, bytes):
        if len(data) == entries:  # one byte per entry
            return np.frombuffer(data, np.uint8)
        return np.frombuffer(data, "<u2" if little else ">u2").astype(np.uint16)
    return np.atleast_1d(np.asarray(data, np.uint16))


def apply_voi_lut_sequence(
    x: np.ndarray, ds: pydicom.Dataset, path: Path
) -> tuple[np.ndarray, tuple[float, float]]:
    """The first VOI LUT of the sequence applied to `x` -> (values, output range).

    PS3.3 C.11.2.1.1: LUT Descriptor = (entries, 0 meaning 65536; first mapped input value;
    bits per entry). Inputs below the first mapped value take the first entry, inputs past the
    end the last; the output range is 0..2**bits - 1 of the LUT itself, not of the image.
    """
    item = ds.VOILUTSequence[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
    except Exception:
        value = item.get("LUTDescriptor")
        raise DicomError(f"{path}: VOI LUT Descriptor = {value!r} is not 3 numbers") from None
    entries = entries or 65536
    data = item.get("LUTData")
    if isinstance(data, bytes):  # OW: 16-bit words in the file's byte order
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        lut = np.frombuffer(data, "<u2" if little else ">u2")
    else:  # US: a number or a list of numbers
        lut = np.atleast_1d(np.asarray(data, np.int64))
    if lut.size < entries:
        raise DicomError(f"{path}: VOI LUT has {lut.size} entries, its descriptor says {entries}")
    lut = lut[:entries]
    idx = np.clip(np.rint(np.asarray(x, np.float64)) - first, 0, entries - 1).astype(np.intp)
    bits = max(bits, int(lut.max()).bit_length())  # an understated depth must not wrap
    return lut[idx], (0.0, float(2**bits - 1))
