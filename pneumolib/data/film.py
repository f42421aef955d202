"""Is this a chest film? The cheap checks, made before any network sees an image.

`film_problem` is the one rule, from facts the readers record: the header's modality and body
part (`dicom_detect.radiograph_problem`), the colour in the image, its size and its shape.
Modality OT (other) or none passes the header rule but vouches for nothing: the image checks
apply to every image, whatever its header or format. A greyscale image of something else
passes them all; only a learned check can catch it. `read_film` reads a DICOM, PNG or JPEG the
way the cache does and returns its pixels with the verdict; `preprocess` applies the same rule.

Thresholds:
- MAX_CHROMA 0.1: a chest film is greyscale. Chroma is the 99th percentile of (largest -
  smallest colour channel) on a 0..1 scale (`dicom_pixels.chroma`): 0 for grey saved as RGB,
  about 0.01 for JPEG noise in one, while photographs, endoscopy, colour Doppler, dental
  photographs and test patterns reach several tenths. A coloured marker or caption under 1% of
  the image does not count.
- MIN_SIDE 64 px: below it there is no anatomy to read (a thumbnail, an icon, a 3x3 test
  image); the smallest films are hundreds of pixels a side.
- MAX_ASPECT 2.0: chest films are 1 to about 1.4 (14x17 in, 35x43 cm, portrait or landscape);
  a strip, a ruler or a panoramic dental film is far wider.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumolib.data.dicom import check_informative, read_dicom
from pneumolib.data.dicom_detect import file_kind, radiograph_problem
from pneumolib.data.letterbox import letterbox
from pneumolib.data.raster import RASTER_SUFFIXES, read_raster

MAX_CHROMA = 0.1
MIN_SIDE = 64
MAX_ASPECT = 2.0


def film_problem(
    *, modality: str | None, body_part: str | None, rows: int, columns: int, chroma: float
) -> str | None:
    """None when an image may be a chest film; else why it is not, in a few words.

    `modality`, `body_part`: the DICOM header's (None for PNG/JPEG); `rows`, `columns`: the
    original size in pixels; `chroma`: its colour, 0..1 (0 for greyscale data).
    """
    header = radiograph_problem(modality, body_part)
    if header:
        return header
    if chroma > MAX_CHROMA:
        return f"colour image (chroma {chroma:.2f}; a chest film is greyscale)"
    if min(rows, columns) < MIN_SIDE:
        return f"image {columns}x{rows} px is smaller than {MIN_SIDE} px"
    aspect = max(rows, columns) / min(rows, columns)
    if aspect > MAX_ASPECT:
        return f"aspect ratio {aspect:.1f} is not a chest film's (at most {MAX_ASPECT:g})"
    return None


@dataclass(frozen=True)
class Film:
    """One input read for the network, with the cheap checks' verdict."""

    pixels: np.ndarray  # uint8 (size, size), letterboxed as the cache's images
    rows: int  # original height in pixels
    columns: int  # original width in pixels
    problem: str | None  # `film_problem`'s reason, None when it may be a chest film
    kind: str  # "dicom", "png" or "jpeg"
    chroma: float = 0.0  # colour in the image, 0..1 (`dicom_pixels.chroma`)


def read_film(path: str | Path, size: int, *, reduced: bool = True) -> Film:
    """One file -> Film with uint8 (size, size) pixels, preprocessed like the cache. PNG/JPEG by
    content (or by suffix), everything else as DICOM (`reduced`: the cache's reduced-scale JPEG
    decode, within one grey level of a full decode). Raises DicomError (NoImageError for a
    DICOMDIR and other objects without an image) / ImageReadError, naming the file; an image
    of almost one grey level is refused (`check_informative`) whatever its format."""
    path = Path(path)
    kind = file_kind(path)
    suffix = path.suffix.lower()
    if kind in ("png", "jpeg") or (kind is None and suffix in RASTER_SUFFIXES):
        img, colour = read_raster(path)
        check_informative(img, path)  # as read_dicom does: a flat image is not scored
        rows, columns = img.shape
        problem = film_problem(
            modality=None, body_part=None, rows=rows, columns=columns, chroma=colour
        )
        kind = kind or ("png" if suffix == ".png" else "jpeg")
        pixels = letterbox(img, size, img.shape)[0]
        return Film(pixels, rows, columns, problem, kind, colour)
    d = read_dicom(path, size=size, reduced=reduced)
    problem = film_problem(
        modality=d.modality, body_part=d.body_part, rows=d.rows, columns=d.columns, chroma=d.chroma
    )
    return Film(d.pixels, d.rows, d.columns, problem, "dicom", d.chroma)
