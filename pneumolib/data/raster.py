"""Read a PNG or JPEG as the cache's images are read: uint8 grey, plus how much colour it holds.

The grey image is OpenCV's greyscale decode (EXIF orientation applied, 16 bits scaled from the
image's own range, the rule `read_dicom` uses for deep data without a window); the colour is
measured on a colour decode of the same file (`dicom_pixels.chroma`), for `film.film_problem`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pneumolib.base.errors import PneumolibError
from pneumolib.data.dicom_pixels import chroma

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageReadError(PneumolibError, ValueError):
    """A PNG/JPEG that cannot be turned into an image; the message names the file."""


def read_raster(path: str | Path) -> tuple[np.ndarray, float]:
    """PNG/JPEG -> (uint8 grey (H, W), chroma 0..1). Colour is converted to grey, alpha
    dropped; a 16-bit image is scaled from its own range to 0..255. ImageReadError (one line
    naming the file) when it is missing, empty or not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    # GRAYSCALE | ANYDEPTH keeps 16 bits and applies EXIF orientation (UNCHANGED would not).
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if img is None or img.ndim != 2 or img.size == 0:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG image")
    # COLOR | ANYDEPTH: three channels (grey ones replicated, a palette expanded), as oriented
    colour = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    bits = 16 if colour is not None and colour.dtype == np.uint16 else 8
    amount = chroma(colour, bits) if colour is not None and colour.ndim == 3 else 0.0
    if img.dtype != np.uint8:
        x = img.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        img = np.clip(np.rint((x - lo) / max(hi - lo, 1e-9) * 255.0), 0, 255).astype(np.uint8)
    return img, amount
