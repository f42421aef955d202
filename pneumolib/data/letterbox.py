"""Square an image for the cache: pad to a centred square, area-resize, and keep the mapping.

`read_dicom`, `predict` (PNG/JPEG) and the batched GPU decode in `preprocess` all call it, so
every route into the cache frames an image the same way and boxes map with the same numbers.
`letterbox_geometry` is that mapping, the one rule: `boxes_to_cache` and `boxes_to_original`
move boxes between an original image of (height, width) and its (size, size) cache image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def letterbox_geometry(*, height: int, width: int, size: int) -> tuple[float, float, float]:
    """The original -> cache mapping of an (height, width) image framed as (size, size):
    (scale, offset_x, offset_y), with cache = original * scale + offset. The scale is
    size / max(height, width); the offsets are the centring pad (whole original pixels, the
    shorter side's pad rounded down) times the scale."""
    side = max(height, width)
    scale = size / side
    return scale, (side - width) // 2 * scale, (side - height) // 2 * scale


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
    scale, ox, oy = letterbox_geometry(height=orig_hw[0], width=orig_hw[1], size=size)
    return img, scale, (ox, oy)


def _as_boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    return arr.reshape(-1, 4)


def boxes_to_cache(boxes: Any, *, height: int, width: int, size: int) -> np.ndarray:
    """Boxes (n, 4) [x, y, w, h] in the pixels of an original (height, width) image -> in its
    (size, size) cache image's pixels (float64 (n, 4)), by `letterbox_geometry`."""
    b = _as_boxes(boxes)
    scale, ox, oy = letterbox_geometry(height=height, width=width, size=size)
    return np.column_stack([b[:, 0] * scale + ox, b[:, 1] * scale + oy, b[:, 2:] * scale])


def boxes_to_original(boxes: Any, *, height: int, width: int, size: int) -> np.ndarray:
    """The inverse of `boxes_to_cache`: boxes (n, 4) [x, y, w, h] in cache pixels -> in the
    original (height, width) image's pixels (float64 (n, 4))."""
    b = _as_boxes(boxes)
    scale, ox, oy = letterbox_geometry(height=height, width=width, size=size)
    return np.column_stack([(b[:, 0] - ox) / scale, (b[:, 1] - oy) / scale, b[:, 2:] / scale])


def truth_boxes(
    rows: pd.DataFrame, *, cache_size: int, heights: np.ndarray, widths: np.ndarray
) -> dict[str, np.ndarray]:
    """{patientId: expert boxes (n, 4) in original pixels} from index `rows` (cache pixels)."""
    return {
        str(pid): boxes_to_original(b, height=int(h), width=int(w), size=cache_size)
        for pid, b, h, w in zip(rows["patientId"], rows["boxes"], heights, widths, strict=True)
    }
