"""Read chest-radiograph DICOMs into 8-bit display-oriented images, and write them.

`read_dicom(path)` returns the pixels as uint8 (H, W) where bright means dense (bone is white),
whatever the file's photometric interpretation, bit depth or compression, plus the header fields
the pipeline uses. `read_dicom(path, size=S)` returns a square (S, S) image instead: the image is
letterboxed (padded to a square, centred) and area-resized. For JPEG Baseline files (every RSNA
image) the JPEG frame is decoded by OpenCV directly, at a reduced DCT scale where that still
leaves at least the target size; this stays within `REDUCED_DECODE_TOLERANCE` of a full decode +
area resize (tested) and is the single largest saving when building the cache.

Grey values follow the DICOM standard (PS3.3): modality rescale/LUT, then the VOI LUT (scaled
by its own output depth) or window; colour and palette images become luma, their chroma kept
in `DicomImage.chroma` for `film.film_problem` (`dicom_pixels`); samples scale by their stored
bit depth. An image that decodes to almost a single grey level is refused
(`check_informative`), and every failure is a one-line DicomError naming the file and its
cause (`dicom_checks`: an empty file, a decoder to install or none that exists, a header that
contradicts itself, float or empty pixel data); a DICOM object without an image by design (a
DICOMDIR, a presentation state, a structured report) raises NoImageError, a DicomError. A file
without the 128-byte preamble is read when its content is a DICOM header (`dicom_detect`).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from pneumolib.data.dicom_checks import (
    DicomError,  # the reader's errors, defined with the checks that name their causes
    NoImageError,
    codec_hint,
    damaged_stream,
    extra_installed,
    j2k_sign_conflict,
    modality_lut_problem,
    non_image_object,
    pixel_data_problem,
)
from pneumolib.data.dicom_detect import read_without_preamble
from pneumolib.data.dicom_pixels import (
    apply_voi_lut_sequence,
    chroma,
    colour_to_grey,
    palette_rgb,
    scale_bits,
    ybr_rgb,
)
from pneumolib.data.letterbox import letterbox

# Reduced-scale decode + area resize against full decode + area resize, in grey levels.
REDUCED_DECODE_TOLERANCE = {"mean_abs": 0.5, "p99_abs": 2.0}
# check_informative: an image with at least FLAT_FRACTION of its pixels within FLAT_LEVELS grey
# levels of its median is refused (a real radiograph has ~10-50% there; see the tests).
FLAT_FRACTION = 0.99
FLAT_LEVELS = 2

_JPEG_SYNTAXES = {JPEGBaseline8Bit, "1.2.840.10008.1.2.4.51"}  # baseline and extended 8-bit
_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


@dataclass
class DicomImage:
    pixels: np.ndarray  # uint8 (H, W), or (S, S) when a size was asked for
    sex: str | None = None  # "M" / "F" / None
    age: int | None = None  # years, None when missing or unparsable
    view: str | None = None  # "AP" / "PA" / ...
    modality: str | None = None  # "CR", "DX", ... (`dicom_detect.radiograph_problem` judges)
    body_part: str | None = None  # BodyPartExamined: "CHEST", ...
    pixel_spacing: tuple[float, float] | None = None  # mm per pixel (row, column)
    rows: int = 0  # original height
    columns: int = 0  # original width
    chroma: float = 0.0  # colour in RGB/YBR/palette data before the grey conversion (0..1)
    # Original -> returned pixel mapping: out = in * scale + offset (x and y alike).
    scale: float = 1.0
    offset: tuple[float, float] = field(default=(0.0, 0.0))

    def meta(self) -> dict:
        return {"sex": self.sex, "age": self.age, "view": self.view}


@dataclass(frozen=True)
class _Header:
    """The numeric header fields the decoder relies on, parsed once at the boundary."""

    rows: int
    columns: int
    samples: int  # SamplesPerPixel: 1 grey / palette, 3 colour
    frames: int
    bits_stored: int
    signed: bool  # PixelRepresentation 1
    photometric: str
    rescale: tuple[float, float] | None  # (slope, intercept) when either is in the header
    window: bool  # WindowCenter and WindowWidth present (and numeric)


def parse_age(value: object) -> int | None:
    """'062Y', '62', 62 -> 62; months/weeks/days count as 0 years; junk -> None."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", str(value).upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "Y"
    return n if unit == "Y" else 0


def _header_number(
    ds: pydicom.Dataset, keyword: str, path: Path, default: float | None, kind: type = int
) -> Any:
    """Header `keyword` as `kind` (its first value if several); `default` when absent or empty.

    Raises DicomError "FILE: header KEYWORD = VALUE is not a number" when any value is not.
    """
    try:
        with warnings.catch_warnings():  # pydicom warns on an invalid IS/DS, then keeps the text
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception as e:  # pydicom set to raise on invalid values
        raise DicomError(f"{path}: header {keyword} is not readable ({type(e).__name__})") from None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if all(v is None or v == "" for v in values):  # absent or empty
        return default
    try:
        numbers = [kind(v) for v in values]
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise DicomError(f"{path}: header {keyword} = {value!r} is not a number") from None
    return numbers[0]


def _read_header(ds: pydicom.Dataset, path: Path) -> _Header:
    """Parse and check the header fields decoding relies on; DicomError (one line) if bad."""
    num = partial(_header_number, ds, path=path)
    for keyword in ("BitsAllocated", "HighBit", "PlanarConfiguration"):  # pydicom reads these
        num(keyword, default=None)
    bits = num("BitsStored", default=8)
    if not 1 <= bits <= 32:
        raise DicomError(f"{path}: header BitsStored = {bits} is outside 1..32")
    slope, icpt = (num(k, default=None, kind=float) for k in ("RescaleSlope", "RescaleIntercept"))
    center, width = (num(k, default=None, kind=float) for k in ("WindowCenter", "WindowWidth"))
    if center is not None and width is not None and width < 1 and not ds.get("VOILUTSequence"):
        raise DicomError(
            f"{path}: header WindowWidth = {width:g} is below 1, which DICOM does not allow "
            "(PS3.3 C.11.2.1.2); the file's window is broken: correct or remove it"
        )
    rescale = None
    if slope is not None or icpt is not None:
        rescale = (1.0 if slope is None else slope, icpt or 0.0)
    return _Header(
        rows=num("Rows", default=0),
        columns=num("Columns", default=0),
        samples=num("SamplesPerPixel", default=1),
        frames=num("NumberOfFrames", default=1),
        bits_stored=bits,
        signed=num("PixelRepresentation", default=0) == 1,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        rescale=rescale,
        window=center is not None and width is not None,
    )


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, column) mm per pixel; None when absent, unparsable or not positive (0\\0)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row, col = (float(v) for v in ds.get("PixelSpacing"))
    except Exception:  # absent (None), one value, text...
        return None
    return (row, col) if all(math.isfinite(v) and v > 0 for v in (row, col)) else None


def check_informative(pixels: np.ndarray, path: str | Path) -> None:
    """Refuse an 8-bit image that is almost a single grey level: a wrong window or LUT, a
    blank export, never a radiograph.

    Rule: DicomError when at least FLAT_FRACTION (99%) of the pixels of the uint8 (H, W)
    image lie within FLAT_LEVELS (2) grey levels of its median.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"check_informative expects uint8 pixels, got {pixels.dtype}")
    if pixels.size == 0:
        raise DicomError(f"{path}: empty image")
    hist = np.bincount(pixels.ravel(), minlength=256)
    median = int(np.searchsorted(np.cumsum(hist), (pixels.size + 1) // 2))
    share = hist[max(median - FLAT_LEVELS, 0) : median + FLAT_LEVELS + 1].sum() / pixels.size
    if share >= FLAT_FRACTION:
        raise DicomError(
            f"{path}: almost a single grey level ({math.floor(share * 1000 + 1e-6) / 10:.1f}% of "
            f"pixels within {FLAT_LEVELS} levels of {median}); check the window/LUT"
        )


def _reduced_factor(height: int, width: int, size: int) -> int:
    """Largest DCT scale 1/f that still decodes to at least 2*size, or exactly size, pixels."""
    side = max(height, width)
    best = 1
    for f in (2, 4, 8):
        if side % f == 0 and (side // f == size or side // f >= 2 * size):
            best = f
    return best


def _decode_jpeg(ds: pydicom.Dataset, h: _Header, path: Path, size: int | None) -> np.ndarray:
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    factor = _reduced_factor(h.rows, h.columns, size) if size else 1
    flag = _REDUCED_FLAGS.get(factor, cv2.IMREAD_GRAYSCALE)
    img = cv2.imdecode(np.frombuffer(frame, np.uint8), flag)
    if img is None:
        raise DicomError(f"{path}: JPEG frame could not be decoded (corrupt or truncated)")
    return img


Decoded = tuple[np.ndarray, float]  # uint8 grey (H, W), chroma of the colour data (0..1)


def _decode(ds: pydicom.Dataset, h: _Header, path: Path, size: int | None) -> Decoded:
    """The pixel data -> (uint8 grey (H, W), bright = dense; its chroma, 0 for grey data).
    `size` allows a reduced JPEG decode."""
    tsyntax = _transfer_syntax(ds)
    if h.photometric == "PALETTE COLOR":
        rgb, depth = palette_rgb(ds.pixel_array, ds)
        return colour_to_grey(rgb, depth), chroma(rgb, depth)
    if h.samples == 3:
        if h.photometric in ("YBR_FULL", "YBR_FULL_422") and not tsyntax.is_compressed:
            ds.pixel_array_options(as_rgb=False)  # pydicom converts 8-bit samples only
            ybr = ds.pixel_array
            colour = chroma(ybr_rgb(ybr, h.bits_stored), h.bits_stored)
            return scale_bits(ybr[..., 0], h.bits_stored), colour  # Y is the luma
        rgb = ds.pixel_array
        return colour_to_grey(rgb, h.bits_stored), chroma(rgb, h.bits_stored)
    if tsyntax in _JPEG_SYNTAXES and _is_grey_jpeg(h):
        reduced = size if _is_plain(ds, h) else None
        return _grey_to_uint8(ds, h, _decode_jpeg(ds, h, path, reduced), path), 0.0
    conflict = j2k_sign_conflict(tsyntax, ds.PixelData, signed=h.signed)
    if conflict:
        raise DicomError(f"{path}: {conflict}")
    return _grey_to_uint8(ds, h, ds.pixel_array, path), 0.0


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    return UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))


def _is_grey_jpeg(h: _Header) -> bool:
    return h.photometric in ("MONOCHROME1", "MONOCHROME2") and h.bits_stored <= 8


def _is_plain(ds: pydicom.Dataset, h: _Header) -> bool:
    """Nothing to apply to the decoded samples but a MONOCHROME1 inversion."""
    luts = ds.get("VOILUTSequence") or ds.get("ModalityLUTSequence")
    return h.rescale is None and not h.window and not luts and not h.signed


def plain_jpeg(ds: pydicom.Dataset, path: str | Path) -> bool:
    """True when `ds` holds one 8-bit greyscale JPEG Baseline frame with no rescale, window or
    LUT to apply (every RSNA file): the only files whose JPEG stream may be decoded straight to
    the image (at a reduced scale, or by nvJPEG), then inverted if MONOCHROME1. DicomError (one
    line) for a header that does not parse."""
    h = _read_header(ds, Path(path))
    tsyntax = _transfer_syntax(ds)
    return (
        tsyntax == JPEGBaseline8Bit
        and h.samples == 1
        and h.frames == 1
        and _is_grey_jpeg(h)
        and _is_plain(ds, h)
    )


def _grey_to_uint8(ds: pydicom.Dataset, h: _Header, arr: np.ndarray, path: Path) -> np.ndarray:
    """Stored grey samples (H, W) -> uint8, MONOCHROME2 orientation.

    Order of PS3.3 C.11: modality rescale/LUT, then the VOI LUT (preferred) or window, whose
    output range becomes 0..255; with neither, 8 bits or fewer scale from their stored range
    and deeper data from its own min..max.
    """
    voi_lut = bool(ds.get("VOILUTSequence"))
    modality = h.rescale is not None or "ModalityLUTSequence" in ds
    if not (modality or voi_lut or h.window or h.signed) and h.bits_stored <= 8:
        out = scale_bits(arr, h.bits_stored)
    else:
        x = apply_modality_lut(arr, ds)
        if voi_lut:
            x, (lo, hi) = apply_voi_lut_sequence(x, ds, path)
        elif h.window:
            x = apply_voi_lut(x, ds, prefer_lut=False)
            lo, hi = _window_output_range(h)
        else:  # no window: use the data's own range
            lo, hi = float(np.min(x)), float(np.max(x))
        x = (np.asarray(x, np.float64) - lo) / max(hi - lo, 1e-9)
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return 255 - out if h.photometric == "MONOCHROME1" else out


def _window_output_range(h: _Header) -> tuple[float, float]:
    # pydicom's linear VOI maps into [y_min, y_max] of the stored bit depth (or of the
    # modality-rescaled range); recover that range so the window becomes 0..255.
    bits = h.bits_stored
    lo = -(2 ** (bits - 1)) if h.signed else 0
    hi = (2 ** (bits - 1) - 1) if h.signed else 2**bits - 1
    if h.rescale is None:
        return float(lo), float(hi)
    slope, icpt = h.rescale
    a, b = lo * slope + icpt, hi * slope + icpt
    return min(a, b), max(a, b)


def read_dicom(path: str | Path, size: int | None = None, reduced: bool = True) -> DicomImage:
    """Read one DICOM file -> DicomImage with uint8 pixels (H, W), or (size, size) if given.

    `reduced=False` forces a full-resolution JPEG decode before resizing.
    Raises DicomError (one line naming the file) for anything unreadable, for a header value
    that is not a number, for a multi-frame file, and for an image that decodes to almost a
    single grey level (`check_informative`); NoImageError, a DicomError, for a DICOM object
    without an image by design (a DICOMDIR, a presentation state, a structured report).
    """
    path = Path(path)
    ds = _read_dataset(path)
    what = non_image_object(ds, path.name)
    if what:
        raise NoImageError(f"{path}: {what}")
    problem = pixel_data_problem(ds) or modality_lut_problem(ds)
    if problem:
        raise DicomError(f"{path}: {problem}")
    h = _read_header(ds, path)
    if h.samples not in (1, 3):
        raise DicomError(f"{path}: expected 1 or 3 samples per pixel, got {h.samples}")
    if h.frames != 1:
        raise DicomError(
            f"{path}: {h.frames} frames; a radiograph has one frame "
            "(multi-frame files are not supported)"
        )
    try:
        img, colour = _decode(ds, h, path, size if reduced else None)
    except DicomError:
        raise
    except Exception as e:
        tsyntax = _transfer_syntax(ds)  # damaged, or a decoder is missing here
        why = damaged_stream(tsyntax, ds.PixelData, rows=h.rows, columns=h.columns)
        why = why or codec_hint(
            tsyntax, h.bits_stored, error=_one_line(e), extra_here=extra_installed(tsyntax)
        )
        why = why or f"pixel data could not be decoded ({_one_line(e)})"
        raise DicomError(f"{path}: {why}") from None
    if img.ndim != 2 or img.size == 0:
        raise DicomError(f"{path}: expected a 2-D image, got shape {img.shape}")
    check_informative(img, path)
    rows, columns = h.rows or img.shape[0], h.columns or img.shape[1]
    scale, offset = 1.0, (0.0, 0.0)
    if size is not None:
        img, scale, offset = letterbox(img, size, (rows, columns))
    return DicomImage(
        pixels=np.ascontiguousarray(img),
        sex=(str(ds.get("PatientSex", "")).strip().upper() or None),
        age=parse_age(ds.get("PatientAge")),
        view=(str(ds.get("ViewPosition", "")).strip().upper() or None),
        modality=(str(ds.get("Modality", "")).strip().upper() or None),
        body_part=(str(ds.get("BodyPartExamined", "")).strip().upper() or None),
        pixel_spacing=_pixel_spacing(ds),
        rows=rows,
        columns=columns,
        chroma=colour,
        scale=scale,
        offset=offset,
    )


def _read_dataset(path: Path) -> pydicom.Dataset:
    """pydicom.dcmread with its failures (missing, truncated, not DICOM) as one-line DicomErrors;
    a file without the preamble is read when it opens on a DICOM header (`dicom_detect`)."""
    try:
        if path.stat().st_size == 0:  # pydicom would call it "not a DICOM"
            raise DicomError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds: pydicom.Dataset | None
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = read_without_preamble(path)
        if ds is None:
            raise DicomError(f"{path}: not a readable DICOM (no 'DICM' at byte 128, no header)")
        for w in caught:  # pydicom only warns when a file ends early
            if "End of file reached" in str(w.message):
                raise DicomError(f"{path}: truncated file ({w.message})")
    except DicomError:
        raise
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except Exception as e:  # pydicom raises many types for bad files
        raise DicomError(f"{path}: not a readable DICOM ({_one_line(e)})") from None
    if "TransferSyntaxUID" not in ds.file_meta:  # no file meta: take it from the encoding
        implicit, little = ds.original_encoding
        syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else syntax
    return ds


def _one_line(e: Exception) -> str:
    """'Type: message' on one line (pydicom's and OpenCV's messages can span several)."""
    return " ".join(f"{type(e).__name__}: {e}".split())
