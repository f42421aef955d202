"""Read chest-radiograph DICOMs into 8-bit display-oriented images, and write them.

`read_dicom(path)` returns the pixels as uint8 (H, W) where bright means dense (bone is white),
whatever the file's photometric interpretation, bit depth or compression, plus the header fields
the pipeline uses. `read_dicom(path, size=S)` returns a square (S, S) image instead: the image is
letterboxed (padded to a square, centred) and area-resized. For JPEG Baseline files (every RSNA
image) the JPEG frame is decoded by OpenCV directly, at a reduced DCT scale where that still
leaves at least the target size; this stays within `REDUCED_DECODE_TOLERANCE` of a full decode +
area resize (tested) and is the single largest saving when building the cache.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

# Reduced-scale decode + area resize against full decode + area resize, in grey levels.
REDUCED_DECODE_TOLERANCE = {"mean_abs": 0.5, "p99_abs": 2.0}

_JPEG_SYNTAXES = {JPEGBaseline8Bit, "1.2.840.10008.1.2.4.51"}  # baseline and extended 8-bit
_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


class DicomError(ValueError):
    """A DICOM that cannot be turned into an image; the message names the file."""


@dataclass
class DicomImage:
    pixels: np.ndarray  # uint8 (H, W), or (S, S) when a size was asked for
    sex: str | None = None  # "M" / "F" / None
    age: int | None = None  # years, None when missing or unparsable
    view: str | None = None  # "AP" / "PA" / ...
    pixel_spacing: tuple[float, float] | None = None  # mm per pixel (row, column)
    rows: int = 0  # original height
    columns: int = 0  # original width
    # Original -> returned pixel mapping: out = in * scale + offset (x and y alike).
    scale: float = 1.0
    offset: tuple[float, float] = field(default=(0.0, 0.0))

    def meta(self) -> dict:
        return {"sex": self.sex, "age": self.age, "view": self.view}


def parse_age(value: object) -> int | None:
    """'062Y', '62', 62 -> 62; months/weeks/days count as 0 years; junk -> None."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", str(value).upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "Y"
    return n if unit == "Y" else 0


def _reduced_factor(height: int, width: int, size: int) -> int:
    """Largest DCT scale 1/f that still decodes to at least 2*size, or exactly size, pixels."""
    side = max(height, width)
    best = 1
    for f in (2, 4, 8):
        if side % f == 0 and (side // f == size or side // f >= 2 * size):
            best = f
    return best


def _decode_jpeg(ds: pydicom.Dataset, path: Path, size: int | None) -> np.ndarray:
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    factor = _reduced_factor(int(ds.Rows), int(ds.Columns), size) if size else 1
    flag = _REDUCED_FLAGS.get(factor, cv2.IMREAD_GRAYSCALE)
    img = cv2.imdecode(np.frombuffer(frame, np.uint8), flag)
    if img is None:
        raise DicomError(f"{path}: JPEG frame could not be decoded (corrupt or truncated)")
    return img


def _to_uint8(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """Any stored pixel data -> uint8 grey, MONOCHROME2 orientation."""
    if arr.ndim == 3:  # RGB / YBR already converted to RGB by pydicom
        arr = cv2.cvtColor(np.ascontiguousarray(arr).astype(np.uint8), cv2.COLOR_RGB2GRAY)
        return arr
    bits = int(ds.get("BitsStored", 8))
    if (
        arr.dtype == np.uint8
        and bits <= 8
        and "RescaleSlope" not in ds
        and "WindowCenter" not in ds
    ):
        out = arr
    else:
        x = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            x = apply_voi_lut(x, ds, prefer_lut=True)
            lo, hi = 0.0, float(2 ** int(ds.get("BitsStored", bits)) - 1)
            if "VOILUTSequence" not in ds:  # a linear window maps onto the stored range
                lo, hi = _window_output_range(ds)
        else:  # no window: use the data's own range
            lo, hi = float(np.min(x)), float(np.max(x))
        x = (np.asarray(x, np.float64) - lo) / max(hi - lo, 1e-9)
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        out = 255 - out
    return out


def _window_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    # pydicom's linear VOI maps into [y_min, y_max] of the stored bit depth (or of the
    # modality-rescaled range); recover that range so the window becomes 0..255.
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        bits = int(ds.get("BitsStored", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo = -(2 ** (bits - 1)) if signed else 0
        hi = (2 ** (bits - 1) - 1) if signed else 2**bits - 1
        slope, icpt = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        a, b = lo * slope + icpt, hi * slope + icpt
        return min(a, b), max(a, b)
    bits = int(ds.get("BitsStored", 16))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def letterbox(
    img: np.ndarray, size: int, orig_hw: tuple[int, int]
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Pad (H, W) to a centred square, area-resize to (size, size).

    Returns the image and the original->output mapping (scale, (offset_x, offset_y)), computed
    from the ORIGINAL size so it holds whatever scale the JPEG was decoded at.
    """
    h, w = img.shape
    side = max(h, w)
    if h != w:
        top, left = (side - h) // 2, (side - w) // 2
        img = cv2.copyMakeBorder(
            img, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0
        )
    if side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    oh, ow = orig_hw
    oside = max(oh, ow)
    scale = size / oside
    return img, scale, ((oside - ow) // 2 * scale, (oside - oh) // 2 * scale)


def read_dicom(path: str | Path, size: int | None = None, reduced: bool = True) -> DicomImage:
    """Read one DICOM file -> DicomImage with uint8 pixels (H, W), or (size, size) if given.

    `reduced=False` forces a full-resolution JPEG decode before resizing.
    Raises DicomError (one line naming the file) for anything unreadable.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
        for w in caught:  # pydicom only warns when a file ends early
            if "End of file reached" in str(w.message):
                raise DicomError(f"{path}: truncated file ({w.message})")
    except DicomError:
        raise
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except Exception as e:  # pydicom raises many types for bad files
        raise DicomError(f"{path}: not a readable DICOM ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise DicomError(f"{path}: DICOM has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    spp = int(ds.get("SamplesPerPixel", 1))
    if spp not in (1, 3):
        raise DicomError(f"{path}: expected 1 or 3 samples per pixel, got {spp}")
    tsyntax = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    try:
        if tsyntax in _JPEG_SYNTAXES and spp == 1 and int(ds.get("BitsStored", 8)) <= 8:
            img = _decode_jpeg(ds, path, size if reduced else None)
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                img = 255 - img
        else:
            img = _to_uint8(ds, ds.pixel_array)
    except DicomError:
        raise
    except Exception as e:
        raise DicomError(
            f"{path}: pixel data could not be decoded ({type(e).__name__}: {e})"
        ) from None
    if img.ndim != 2 or img.size == 0:
        raise DicomError(f"{path}: expected a 2-D image, got shape {img.shape}")
    scale, offset = 1.0, (0.0, 0.0)
    if size is not None:
        img, scale, offset = letterbox(img, size, (rows or img.shape[0], cols or img.shape[1]))
    spacing = ds.get("PixelSpacing")
    return DicomImage(
        pixels=np.ascontiguousarray(img),
        sex=(str(ds.get("PatientSex", "")).strip().upper() or None),
        age=parse_age(ds.get("PatientAge")),
        view=(str(ds.get("ViewPosition", "")).strip().upper() or None),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        rows=rows,
        columns=cols,
        scale=scale,
        offset=offset,
    )


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    patient_id: str,
    sex: str = "M",
    age: int = 50,
    view: str = "PA",
    jpeg: bool = True,
    quality: int = 95,
) -> None:
    """Write uint8 (H, W) pixels as an RSNA-style DICOM: JPEG Baseline MONOCHROME2 by default.

    Carries the tags RSNA files have (PatientID, PatientSex, PatientAge, ViewPosition,
    PixelSpacing, Modality CR, BodyPartExamined CHEST).
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture, as RSNA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientSex = sex
    with warnings.catch_warnings():  # RSNA stores ages as bare numbers ('62'), not '062Y'
        warnings.simplefilter("ignore", UserWarning)
        ds.PatientAge = str(int(age))
    ds.ViewPosition = view
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PixelSpacing = [0.168, 0.168]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if jpeg:
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DicomError(f"{path}: JPEG encoding failed")
        ds.PixelData = encapsulate([buf.tobytes()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
