"""Score new radiographs with a trained checkpoint: DICOM, PNG or JPEG files, folders, globs.

Each file is preprocessed exactly as the training cache was (DICOM: `read_dicom(path,
size=S)`, the same reduced JPEG decode and letterbox as `preprocess`; PNG/JPEG: grey, 8-bit,
then the same letterbox), then takes the validation path: one deterministic resize from the
cache side S to the network input (`augment.eval_affines` + the warp training validated with),
normalised with the training statistics stored in the checkpoint. A file that cannot be read
is reported (one line naming it) and skipped; the rest are still scored. A checkpoint trained
on synthetic data (its stats say so, see `provenance.is_synthetic`) gets one warning line on stderr.

The network's output is calibrated with the run's RUN/calibration.json (fitted on val by
`evaluate`, `evaluate.calibration`) into a risk, and `positive` applies one of the run's
val-chosen operating points. A run without it (or fitted on another checkpoint) is scored raw,
and one stderr line says so.
"""

from __future__ import annotations

import glob
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pneumolib.base.errors import PneumolibError, UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.progress import bar as progress_bar
from pneumolib.base.rundir import calibration_path
from pneumolib.cam.figures import save_overlays
from pneumolib.cam.localisation import Boxes
from pneumolib.cam.maps import cam
from pneumolib.core.augment import eval_affines
from pneumolib.core.checkpoint import load_run
from pneumolib.core.runtime import amp_dtype, model_input, warp_on_device
from pneumolib.data.cache_stats import CacheStats
from pneumolib.data.dicom import DicomError, check_informative, letterbox, read_dicom
from pneumolib.data.dicom_detect import file_kind, radiograph_problem
from pneumolib.evaluate.calibration import (
    DEFAULT_OPERATING_POINT,
    OPERATING_POINTS,
    Calibration,
    activation,
    as_threshold,
    read_calibration,
)

IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_BATCH = 32
COLUMNS = ["file", "probability", "probability_raw", "positive"]


class ImageReadError(PneumolibError, ValueError):
    """A PNG/JPEG that cannot be turned into an image; the message names the file."""


# --- inputs ------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively for *.dcm, *.png, *.jpg, *.jpeg, any case, and for
    files of other names whose content is DICOM, PNG or JPEG: `IM0001` as PACS exports write
    them) and globs -> (files in input order without repeats, one error line per input that
    found none). A file named explicitly is kept whatever its suffix."""
    files: dict[Path, None] = {}  # ordered set
    errors = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not found:
                errors.append(
                    f"{text}: folder holds no .dcm, .png, .jpg or .jpeg files (nor other files "
                    "whose content is DICOM, PNG or JPEG)"
                )
        elif path.is_file():
            found = [path]
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                errors.append(f"{text}: pattern matches no files")
        else:
            found = []
            errors.append(f"{text}: no such file or folder")
        files.update(dict.fromkeys(found))
    return list(files), errors


def _is_image(path: Path) -> bool:
    """By suffix, or else by content (the first bytes; a header parse only for likely DICOMs)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or file_kind(path) is not None


def read_raster(path: str | Path) -> np.ndarray:
    """PNG/JPEG -> uint8 (H, W) grey. Colour is converted to grey, alpha dropped; a 16-bit
    image is scaled from its own range to 0..255 (the rule `read_dicom` uses for data deeper
    than 8 bits without a window)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    # GRAYSCALE | ANYDEPTH keeps 16 bits and applies EXIF orientation (UNCHANGED would not).
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if img is None or img.ndim != 2 or img.size == 0:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG image")
    if img.dtype != np.uint8:
        x = img.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        img = np.clip(np.rint((x - lo) / max(hi - lo, 1e-9) * 255.0), 0, 255).astype(np.uint8)
    return img


def read_image(path: str | Path, size: int, reduced: bool = True) -> np.ndarray:
    """One file -> uint8 (size, size), preprocessed like the cache. PNG/JPEG by content (or by
    suffix), everything else as DICOM (`reduced`: the cache's reduced-scale JPEG decode, within
    one grey level of a full decode). Raises DicomError / ImageReadError naming the file. A
    DICOM that is not a chest radiograph (`radiograph_problem`) gets one warning line on
    stderr and is scored all the same."""
    path = Path(path)
    kind = file_kind(path)
    if kind in ("png", "jpeg") or (kind is None and path.suffix.lower() in RASTER_SUFFIXES):
        img = read_raster(path)
        check_informative(img, path)  # as read_dicom does: a flat image is not scored
        return letterbox(img, size, img.shape)[0]
    d = read_dicom(path, size=size, reduced=reduced)
    problem = radiograph_problem(d.modality, d.body_part)
    if problem:  # tqdm.write: a line of its own, not glued to the progress bar
        tqdm.write(
            f"warning: {path}: {problem}; scored all the same, but the model knows only chest "
            "radiographs",
            file=sys.stderr,
        )
    return d.pixels


def synthetic_warning(checkpoint: str | Path, stats: CacheStats) -> str | None:
    """The warning for a checkpoint whose training cache was marked synthetic, else None."""
    if stats.synthetic is not True:
        return None
    return (
        f"warning: {checkpoint} was trained on synthetic phantoms (pneumolib demo data); "
        "its probabilities say nothing about real radiographs"
    )


def _overlay_names(files: Sequence[Path]) -> list[str]:
    """File stems made safe and unique (a/x.dcm and b/x.dcm -> x, x_2) for overlay PNGs."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", f.stem) or "image"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def run_calibration(
    folder: Path, sha256: str, operating_point: str
) -> tuple[Calibration | None, float, str | None]:
    """The calibration of the checkpoint with hash `sha256` in `folder` and the threshold of
    `operating_point` -> (calibration or None, threshold, None or the one line to print when
    the scores stay raw: no calibration.json, or one fitted on another checkpoint)."""
    cal = read_calibration(folder)
    path = calibration_path(folder)
    if cal is not None and cal.checkpoint_sha256 == sha256:
        return cal, cal.threshold(operating_point), None
    why = (
        f"{path} not found"
        if cal is None
        else f"{path} was fitted on another checkpoint (sha256 {cal.checkpoint_sha256})"
    )
    threshold = (
        0.5 if operating_point in OPERATING_POINTS else as_threshold(operating_point, ["0.5"])
    )
    note = (
        f"note: {why}: probabilities are the network's raw output, not a calibrated risk, and "
        f"`positive` is probability >= {threshold:g}; run `python -m pneumolib evaluate --run "
        f"{folder}` to calibrate"
    )
    return None, threshold, note


def _score(
    logits: torch.Tensor, cal: Calibration | None, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (B, K) -> (calibrated probability (B,), raw probability (B,), positive (B,))."""
    z = logits.detach().double().cpu().numpy()
    raw = activation(z)[:, -1]
    p = raw if cal is None else cal.pneumonia(z)
    return p, raw, p >= threshold  # the rule of every metric: positive at p >= threshold


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    *,
    device: str = "auto",
    cam_dir: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    reduced: bool = True,
    operating_point: str = DEFAULT_OPERATING_POINT,
) -> tuple[pd.DataFrame, list[str]]:
    """Score every readable file among `inputs` -> (DataFrame with columns `file,
    probability, probability_raw, positive` in input order, one error line per unreadable
    file or empty input). `probability` is calibrated by the run's calibration.json (raw,
    with one stderr line, without it) and `positive` applies `operating_point` (a name in
    `calibration.OPERATING_POINTS` or a number). With `cam_dir`, also writes one CAM overlay
    PNG per scored file there (`cam.cam`, default layer). `reduced` keeps the cache's
    reduced-scale JPEG decode (as `preprocess` does by default)."""

    run = load_run(checkpoint, device=device)
    model, cfg, stats, dev = run.model, run.config, run.stats, run.device
    cal, threshold, note = run_calibration(run.folder, run.sha256, operating_point)
    for line in (synthetic_warning(checkpoint, stats), note):
        if line:  # stderr: the CSV on stdout stays clean
            print(line, file=sys.stderr)
    size_in, size_out = stats.size, cfg.image_size
    on_device = warp_on_device(dev, gpu_augment=cfg.gpu_augment)
    amp = amp_dtype(dev, cfg.amp)
    files, errors = expand_inputs(inputs)
    rows: list[dict] = []
    batches = range(0, len(files), max(1, batch_size))
    for start in progress_bar(
        batches, desc="predict", leave=False, disable=not progress, file=sys.stderr
    ):
        ok, images = [], []
        for f in files[start : start + batch_size]:
            try:
                images.append(read_image(f, size_in, reduced))
                ok.append(f)
            except (DicomError, ImageReadError) as e:
                errors.append(str(e).splitlines()[0])
        if not ok:
            continue
        batch = np.stack(images)  # (B, S, S) uint8
        x = model_input(
            batch,
            eval_affines(len(batch), size_in, size_out),
            size=size_out,
            stats=stats,
            device=dev,
            warp_on_device=on_device,
        )
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = model(x)  # (B, K)
        p, raw, positive = _score(logits, cal, threshold)
        if cam_dir is not None:
            maps, _ = cam(model, x)
            names = _overlay_names(ok)
            empty: list[Boxes] = [[] for _ in ok]  # no expert boxes for a new file
            save_overlays(cam_dir, names, images=batch, maps=maps, boxes=empty, probs=p)
        rows += [
            dict(zip(COLUMNS, (str(f), float(a), float(b), bool(c)), strict=True))
            for f, a, b, c in zip(ok, p, raw, positive, strict=True)
        ]
    return pd.DataFrame(rows, columns=COLUMNS), errors


def predict_cli(
    checkpoint: str | Path,
    inputs: Sequence[str],
    *,
    out_csv: str | Path | None = None,
    cam_dir: str | Path | None = None,
    device: str = "auto",
    operating_point: str = DEFAULT_OPERATING_POINT,
) -> int:
    """`python -m pneumolib predict`: CSV `file, probability, probability_raw, positive` to
    stdout (or `out_csv`, written under a temporary name and renamed), one stderr line per
    unreadable file. Returns the exit code: 1 if any input failed, else 0."""
    if cam_dir is not None and Path(cam_dir).exists() and not Path(cam_dir).is_dir():
        raise UsageError(f"--cam {cam_dir}: exists and is not a folder")
    df, errors = predict_files(
        checkpoint,
        inputs,
        device=device,
        cam_dir=cam_dir,
        progress=True,
        operating_point=operating_point,
    )
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if out_csv is None:
        df.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    else:
        out = Path(out_csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda p: df.to_csv(p, index=False))  # never a half-written CSV
    where = "" if out_csv is None else f" -> {out_csv}"
    print(f"scored {len(df)} file(s), {len(errors)} failed{where}", file=sys.stderr)
    return 1 if errors else 0
