"""`python -m pneumolib submit`: Kaggle's submission file for a folder of DICOMs.

One row per image DICOM of the folder (found as `predict` finds them: by content too, a
DICOMDIR or other DICOM without an image skipped with a note), `patientId` the file's stem as
in Kaggle's test folder, `PredictionString` the boxes `confidence x y width height ...` in the
original image's pixels (empty: no box). A detector run submits its boxes at the confidence cut
chosen on val (`detect.predict`). A classifier run submits its CAM boxes under the rule
`cam` fitted on val (RUN/box_rule.json, `cam.boxes`), confidences from its calibrated
probability. `gate` names a classifier run whose val-chosen operating point must call an image
positive for its boxes to be kept. Any file that cannot be read stops the command with one
line naming it, and the file is written only whole (atomically), so nothing is half-written.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.progress import bar as progress_bar
from pneumolib.base.rundir import BEST, box_rule_path, trained_config
from pneumolib.cam.box_run import box_calibration, calibrated
from pneumolib.cam.boxes import BoxesScores, MapCollector, read_box_rule, rule_boxes
from pneumolib.cam.maps import cam, class_target, grad_cam
from pneumolib.core.checkpoint import load_run
from pneumolib.data.dicom import NoImageError
from pneumolib.data.dicom_detect import file_kind
from pneumolib.data.film import Film, read_film
from pneumolib.data.inputs import expand_inputs
from pneumolib.detect.evaluate import GATE_POINT, open_detector
from pneumolib.detect.predict import file_boxes
from pneumolib.evaluate.boxes import format_prediction_string
from pneumolib.predict import predict_files, scorer_for

HEADER = ("patientId", "PredictionString")  # Kaggle's, in its order
DEFAULT_GATE_POINT = GATE_POINT  # a gate removes false boxes: the balanced val point


def submission_files(images: str | Path) -> list[Path]:
    """The image DICOMs of folder `images` (by suffix or content), each stem once; a
    one-line UsageError for a folder without any, or for two files with one stem."""
    files, errors = expand_inputs([images])
    if errors:
        raise UsageError(errors[0])
    dicoms = [f for f in files if f.suffix.lower() == ".dcm" or file_kind(f) == "dicom"]
    if not dicoms:
        raise UsageError(f"{images}: holds no DICOM files; Kaggle's test folder holds .dcm files")
    seen: dict[str, Path] = {}
    for f in dicoms:
        if f.stem in seen:
            raise UsageError(f"{f}: patientId {f.stem} again ({seen[f.stem]}); one file per id")
        seen[f.stem] = f
    return dicoms


def _read(path: Path, size: int) -> Film | None:
    """One DICOM like the cache's images; None (with a note) for a DICOM without an image."""
    try:
        return read_film(path, size)
    except NoImageError as e:
        tqdm.write(f"note: {str(e).splitlines()[0]}; skipped", file=sys.stderr)
        return None


def cam_boxes(
    run: str | Path, files: list[Path], *, device: str = "auto", batch_size: int = 32,
    progress: bool = False,
) -> dict[str, BoxesScores]:  # fmt: skip
    """{patientId: (boxes (m, 4) [x, y, w, h] original pixels, confidences (m,))} of a
    classifier run's CAM boxes for `files`, under its fitted RUN/box_rule.json."""
    loaded = load_run(run, device=device)
    cal, cal_sha, note = box_calibration(loaded.folder, loaded.sha256)
    identity = {"checkpoint_sha256": loaded.sha256, "calibration_sha256": cal_sha}
    rule = read_box_rule(loaded.folder, identity=identity)
    if rule is None:
        raise UsageError(
            f"{box_rule_path(loaded.folder)}: no box rule fitted for this checkpoint and "
            f"calibration; run `python -m pneumolib cam --run {loaded.folder}` first"
        )
    if note:
        print(note, file=sys.stderr)
    scorer = scorer_for(loaded)
    found = MapCollector(map_size=scorer.size_out, cache_size=scorer.size_in)
    make_maps = cam if rule.method == "cam" else grad_cam
    for start in progress_bar(range(0, len(files), batch_size), desc="submit", leave=False,
                              disable=not progress, file=sys.stderr):  # fmt: skip
        read = [(f, _read(f, scorer.size_in)) for f in files[start : start + batch_size]]
        films = [(f, film) for f, film in read if film is not None]
        if not films:
            continue
        x = scorer.inputs(np.stack([film.pixels for _, film in films]))
        maps, probs = make_maps(loaded.model, x, layer=rule.layer, target=class_target("pneumonia"))
        found.add(
            [f.stem for f, _ in films],
            maps.detach().float().cpu().numpy(),
            calibrated(cal, probs.detach().double().cpu().numpy()),
            sizes=np.array([[film.rows, film.columns] for _, film in films]),
        )
    return rule_boxes(found.maps, rule)


def detector_boxes(
    run: str | Path, files: list[Path], *, device: str = "auto", progress: bool = False
) -> dict[str, BoxesScores]:
    """{patientId: (boxes (m, 4) [x, y, w, h] original pixels, confidences (m,))} of a detector
    run's boxes for `files` at its val-chosen cut; any unreadable file: a one-line UsageError."""
    found, errors = file_boxes(open_detector(run, device=device), files, progress=progress)
    if errors:
        raise UsageError(errors[0])
    return {f.stem: v[0] for f, v in found.items()}


def _is_detector(checkpoint: Path) -> bool:
    """Whether a run's checkpoint is a detector's, by its folder's records (torch-free)."""
    return trained_config(checkpoint.parent, checkpoint=checkpoint.name).config.kind == "detector"


def gated(
    boxes: Mapping[str, BoxesScores], gate: str | Path, files: list[Path], *, device: str,
    operating_point: str = DEFAULT_GATE_POINT,
) -> dict[str, BoxesScores]:  # fmt: skip
    """`boxes` with every image's boxes dropped unless classifier run `gate` calls it positive
    at its val-chosen `operating_point` (an image it flags as unlike its films: dropped)."""
    checkpoint = Path(gate) / "best.pt" if Path(gate).is_dir() else Path(gate)
    scores, errors = predict_files(checkpoint, files, device=device,
                                   operating_point=operating_point)  # fmt: skip
    if errors:
        raise UsageError(errors[0])
    keep = {Path(f).stem for f, p in zip(scores["file"], scores["positive"], strict=True)
            if p is True or (not pd.isna(p) and bool(p))}  # fmt: skip
    empty = (np.zeros((0, 4)), np.zeros(0))
    return {pid: v if pid in keep else empty for pid, v in boxes.items()}


def submit(
    run: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    gate: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Write Kaggle's submission file `out` for the DICOMs of `images` from `run` (see the
    module docstring) and return it: `patientId, PredictionString`, one row per image."""
    files = submission_files(images)
    checkpoint = Path(run) / BEST if Path(run).is_dir() else Path(run)
    find = detector_boxes if _is_detector(checkpoint) else cam_boxes
    boxes = find(checkpoint, files, device=device, progress=progress)
    if gate is not None:
        boxes = gated(boxes, gate, files, device=device)
    table = pd.DataFrame(
        [(pid, format_prediction_string(*v)) for pid, v in boxes.items()], columns=list(HEADER)
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: table.to_csv(p, index=False))
    n_boxes = sum(len(v[1]) for v in boxes.values())
    print(f"submission: {len(table)} image(s), {n_boxes} box(es) -> {out}", file=sys.stderr)
    return table


__all__ = ["HEADER", "cam_boxes", "detector_boxes", "gated", "submission_files", "submit"]
