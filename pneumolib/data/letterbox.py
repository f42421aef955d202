"""Square an image for the cache: pad to a centred square, area-resize, and keep the mapping.

`read_dicom`, `predict` (PNG/JPEG) and the batched GPU decode in `preprocess` all call it, so
every route into the cache frames an image the same way and boxes map with the same numbers.
"""

from __future__ import annotations

import cv2
import numpy as np


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
