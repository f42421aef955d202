"""A detector's boxes for new files (`predict` and `submit` on a detector run).

Each file is read as the cache's images were (`data.film.read_film`: the same decode and
letterbox to the cache side), resized to the network input as validation does
(`batches.detector_input`), and the detector's boxes at or above the run's val-chosen
confidence cut are moved back to the original image's pixels (`data.letterbox`). A file that
cannot be read is one error line naming it; a DICOM without an image (a DICOMDIR) is skipped
with a note.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.progress import bar as progress_bar
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.runtime import amp_dtype, warp_on_device
from pneumolib.data.dicom import DicomError, NoImageError
from pneumolib.data.film import Film, read_film
from pneumolib.data.inputs import expand_inputs
from pneumolib.data.letterbox import boxes_to_original
from pneumolib.data.raster import ImageReadError
from pneumolib.detect.batches import detector_input, to_cache_pixels
from pneumolib.detect.evaluate import Detector, open_detector
from pneumolib.detect.score import above
from pneumolib.evaluate.boxes import BoxesScores, format_prediction_string

COLUMNS = ["file", "PredictionString", "top_confidence"]  # predict's CSV on a detector


def _read(path: Path, size: int, errors: list[str]) -> Film | None:
    """One file like the cache's images; None with a note (no image) or an error line."""
    try:
        return read_film(path, size)
    except NoImageError as e:
        tqdm.write(f"note: {str(e).splitlines()[0]}; skipped", file=sys.stderr)
    except (DicomError, ImageReadError, OSError) as e:
        errors.append(str(e).splitlines()[0] if str(e) else f"{path}: cannot be read")
    return None


@torch.no_grad()
def _batch_boxes(det: Detector, films: list[Film]) -> list[tuple[BoxesScores, float]]:
    """Per film: (its boxes at or above the cut, original pixels, confidences), top conf."""
    cfg, size = det.config, det.stats.size
    batch = {"images": torch.from_numpy(np.stack([f.pixels for f in films])), "epoch": 0,
             "batch": 0}  # fmt: skip
    on_device = warp_on_device(det.device, gpu_augment=cfg.gpu_augment)
    x, mats = detector_input(batch, det.device, size=cfg.image_size,
                             policy=AugmentPolicy.identity(), train=False, seed=0,
                             on_device=on_device)  # fmt: skip
    dtype = amp_dtype(det.device, cfg.amp)
    with torch.autocast(det.device.type, dtype=dtype, enabled=dtype is not None):
        found = det.model(x)
    out = []
    for film, (b, s) in zip(films, to_cache_pixels(found, mats, cache_size=size), strict=True):
        kept_b, kept_s = above({"_": (b, s)}, det.box_threshold)["_"]
        orig = boxes_to_original(kept_b, height=film.rows, width=film.columns, size=size)
        out.append(((orig, kept_s), float(s.max(initial=0.0))))
    return out


def file_boxes(
    det: Detector, files: Sequence[Path], *, batch_size: int = 32, progress: bool = False
) -> tuple[dict[Path, tuple[BoxesScores, float]], list[str]]:
    """({file: ((boxes (m, 4) [x, y, w, h] original pixels, confidences (m,)), the top
    confidence of any box, 0 where none)}, one error line per file that cannot be read)."""
    results: dict[Path, tuple[BoxesScores, float]] = {}
    errors: list[str] = []
    for start in progress_bar(range(0, len(files), batch_size), desc="boxes", leave=False,
                              disable=not progress, file=sys.stderr):  # fmt: skip
        read = [(f, _read(f, det.stats.size, errors)) for f in files[start : start + batch_size]]
        films = [(f, film) for f, film in read if film is not None]
        if films:
            found = _batch_boxes(det, [film for _, film in films])
            results.update(zip([f for f, _ in films], found, strict=True))
    return results, errors


def predict_boxes(
    checkpoint: str | Path, inputs: Sequence[str | Path], *, device: str = "auto",
    progress: bool = False,
) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """A detector checkpoint's boxes for the files, folders or globs `inputs`: (DataFrame
    `file, PredictionString` (original pixels, empty: no box), `top_confidence`), one row per
    image read; the error lines of inputs that found nothing or could not be read)."""
    det = open_detector(checkpoint, device=device)
    files, errors = expand_inputs(list(inputs))
    results, read_errors = file_boxes(det, files, progress=progress)
    rows = [(str(f), format_prediction_string(*v[0]), v[1]) for f, v in results.items()]
    return pd.DataFrame(rows, columns=COLUMNS), errors + read_errors


def predict_boxes_cli(
    checkpoint: str | Path, inputs: Sequence[str], *, out_csv: str | Path | None = None,
    device: str = "auto",
) -> int:  # fmt: skip
    """`python -m pneumolib predict` on a detector checkpoint: the CSV of `predict_boxes` to
    stdout (or `out_csv`, written whole), one stderr line per failed input; exit code 1 when
    any input failed, else 0."""
    df, errors = predict_boxes(checkpoint, inputs, device=device, progress=True)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if out_csv is None:
        df.to_csv(sys.stdout, index=False)
    else:
        out = Path(out_csv)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, lambda p: df.to_csv(p, index=False))
        except OSError as e:
            raise UsageError(f"{out_csv}: cannot write the CSV ({e.strerror or e})") from None
        print(f"{len(df)} file(s) -> {out}", file=sys.stderr)
    return 1 if errors else 0
