"""Score new radiographs with a trained checkpoint: DICOM, PNG or JPEG files, folders, globs.

Each file is preprocessed exactly as the training cache was (DICOM: `read_dicom(path,
size=S)`, the same reduced JPEG decode and letterbox as `preprocess`; PNG/JPEG: grey, 8-bit,
then the same letterbox), then takes the validation path: one deterministic resize from the
cache side S to the network input (`augment.eval_affines` + the warp training validated with),
normalised with the training statistics stored in the checkpoint. A file that cannot be read
is reported (one line naming it) and skipped; the rest are still scored. A DICOM without an
image (a DICOMDIR, a report) found in a folder is skipped with a note. A checkpoint trained
on synthetic data (its stats say so, see `provenance.is_synthetic`) gets one warning line.

The network's output is calibrated with the run's RUN/calibration.json (fitted on val by
`evaluate`, `evaluate.calibration`) into a risk, and `positive` applies one of the run's
val-chosen operating points. A run without it (or fitted on another checkpoint) is scored raw,
and one stderr line says so. Every input is checked for being like a chest film: the image
checks of the reader, then the run's learned check (RUN/ood.npz, `evaluate.ood`); a flagged
input keeps its probability but gets no decision (`--allow-any-input` decides anyway).
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pneumolib.base.errors import UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.progress import bar as progress_bar
from pneumolib.base.rundir import calibration_path, ood_path
from pneumolib.cam.figures import save_overlays
from pneumolib.cam.localisation import Boxes
from pneumolib.cam.maps import cam
from pneumolib.core.augment import eval_affines
from pneumolib.core.checkpoint import Run, load_run
from pneumolib.core.models import penultimate_features
from pneumolib.core.runtime import amp_dtype, model_input, warp_on_device
from pneumolib.data.cache_stats import CacheStats
from pneumolib.data.dicom import DicomError, NoImageError
from pneumolib.data.film import read_film
from pneumolib.data.inputs import expand_inputs, named_files
from pneumolib.data.raster import ImageReadError
from pneumolib.evaluate.calibration import (
    DEFAULT_OPERATING_POINT,
    OPERATING_POINTS,
    Calibration,
    activation,
    as_threshold,
    read_calibration,
)
from pneumolib.evaluate.ood import OodStats, read_ood

DEFAULT_BATCH = 32
COLUMNS = ["file", "probability", "probability_raw", "positive", "in_distribution", "ood_score"]
OVERLAY = "overlay"  # the column `--cam` adds: each file's overlay PNG
ANY_INPUT = "--allow-any-input"  # the flag that decides on flagged inputs, in every command


def synthetic_warning(checkpoint: str | Path, stats: CacheStats) -> str | None:
    """The warning for a checkpoint whose training cache was marked synthetic, else None."""
    if stats.synthetic is not True:
        return None
    return (
        f"warning: {checkpoint} was trained on synthetic phantoms (pneumolib demo data); "
        "its probabilities say nothing about real radiographs"
    )


def overlay_names(files: Sequence[Path]) -> list[str]:
    """One overlay name per file, unique across the whole call and kept readable: the file's
    stem with only path separators and control characters replaced by `_` (`röntgen 1`
    stays), a repeat numbered (`a/x`, `b/x`, `c/x_2` -> `x`, `x_2`, `x_2_2`), compared
    ignoring case, as macOS and Windows disks do."""
    used: set[str] = set()
    names = []
    for f in files:
        base = "".join("_" if _unsafe(ch) else ch for ch in f.stem)
        base = base if base.strip(". ") else "image"
        name, k = base, 1
        while name.casefold() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.casefold())
        names.append(name)
    return names


def _unsafe(ch: str) -> bool:
    """A path separator, or a control (or unencodable surrogate) character."""
    return ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cs")


@dataclass
class _Overlays:
    """CAM overlays into `folder` (None: none asked for). The first failure to write is kept
    as one line naming the folder, and no more are drawn: the scores are kept all the same."""

    folder: Path | None
    failed: str | None = None
    written: list[str] = field(default_factory=list)

    @property
    def wanted(self) -> bool:
        return self.folder is not None and self.failed is None

    def save(self, names: list[str], images: np.ndarray, maps: torch.Tensor | None, probs) -> None:
        """Overlays of one batch: images (B, S, S), maps (B, h, w), probabilities (B,)."""
        paths = [""] * len(names)
        if self.folder is not None and self.failed is None and maps is not None:
            empty: list[Boxes] = [[] for _ in names]  # no expert boxes for a new file
            try:
                done = save_overlays(
                    self.folder, names, images=images, maps=maps, boxes=empty, probs=probs
                )
                paths = [str(x) for x in done]
            except OSError as e:
                self.failed = f"{self.folder}: overlays cannot be written ({e.strerror or e})"
        self.written += paths


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


def run_ood(folder: Path, sha256: str) -> tuple[OodStats | None, str | None]:
    """The run's learned out-of-distribution check (RUN/ood.npz, fitted by `evaluate` on this
    checkpoint) -> (the check or None, None or the one note to print when there is none)."""
    ood = read_ood(folder)
    if ood is not None and ood.checkpoint_sha256 == sha256:
        return ood, None
    why = (
        f"{ood_path(folder)} not found"
        if ood is None
        else f"{ood_path(folder)} is another checkpoint's"
    )
    return None, (
        f"note: {why}: inputs get only the image checks (colour, size, header), no learned "
        f"check of whether they look like the training films; run `python -m pneumolib "
        f"evaluate --run {folder}` to fit it"
    )


@dataclass(frozen=True)
class _Scorer:
    """What scoring a batch needs, built once per call from the checkpoint's run."""

    model: torch.nn.Module
    stats: CacheStats
    device: torch.device
    size_in: int  # the cache side S the files are letterboxed to
    size_out: int  # the network input
    on_device: bool
    amp: torch.dtype | None
    cal: Calibration | None
    threshold: float
    ood: OodStats | None
    allow_any_input: bool
    notes: tuple[str | None, ...] = ()  # what the caller prints once: no calibration, no check

    def inputs(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S) letterboxed files -> the network input (B, 1, s, s), made as for
        validation."""
        return model_input(
            batch,
            eval_affines(len(batch), self.size_in, self.size_out),
            size=self.size_out,
            stats=self.stats,
            device=self.device,
            warp_on_device=self.on_device,
        )

    def forward(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """uint8 (B, S, S) -> (network input (B, 1, s, s), logits (B, K), features (B, D))."""
        x = self.inputs(batch)
        amp = self.amp
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            with penultimate_features(self.model) as found:
                logits = self.model(x)  # (B, K)
        return x, logits, torch.cat(found).numpy()

    def rows(self, files: list[Path], logits: torch.Tensor, features: np.ndarray,
             problems: list[str | None]) -> list[dict]:  # fmt: skip
        """One CSV row per file; a file the checks flag keeps its probability, its `positive`
        is empty (unless `allow_any_input`), and gets one warning line."""
        p, raw, positive = _score(logits, self.cal, self.threshold)
        score = self.ood.score(features) if self.ood is not None else np.full(len(p), np.nan)
        out = []
        for i, f in enumerate(files):
            reasons = [why for why in (problems[i],) if why]
            if score[i] > 1.0:
                reasons.append(
                    f"features far from the training films', ood_score {score[i]:.2f} > 1"
                )
            flagged = bool(reasons)
            if flagged:
                tqdm.write(_flag_line(f, "; ".join(reasons), decided=self.allow_any_input),
                           file=sys.stderr)  # fmt: skip
            decision = pd.NA if flagged and not self.allow_any_input else bool(positive[i])
            values = (str(f), float(p[i]), float(raw[i]), decision, not flagged, float(score[i]))
            out.append(dict(zip(COLUMNS, values, strict=True)))
        return out


def _flag_line(path: Path, reason: str, *, decided: bool) -> str:
    """The warning for an input that does not look like a chest film."""
    what = (
        f"decided anyway ({ANY_INPUT})"
        if decided
        else f"probability kept, `positive` left empty ({ANY_INPUT} decides anyway)"
    )
    return f"warning: {path}: not like a chest film: {reason}; {what}"


def _read_batch(
    paths: list[Path], size: int, *, reduced: bool, named: set[Path]
) -> tuple[list[Path], list[np.ndarray], list[str | None], list[str]]:
    """Read one batch -> (files read, their pixels (S, S), the image checks' verdicts, error
    lines). A DICOM without an image found in a folder (a DICOMDIR, a report) gets a note
    and is skipped; named alone, it is an error."""
    ok, images, problems, errors = [], [], [], []
    for f in paths:
        try:
            film = read_film(f, size, reduced=reduced)
        except NoImageError as e:
            if f in named:
                errors.append(str(e).splitlines()[0])
            else:
                tqdm.write(f"note: {str(e).splitlines()[0]}; skipped", file=sys.stderr)
        except (DicomError, ImageReadError) as e:
            errors.append(str(e).splitlines()[0])
        else:
            ok.append(f)
            images.append(film.pixels)
            problems.append(film.problem)
    return ok, images, problems, errors


def _scorer(
    checkpoint: str | Path, *, device: str, operating_point: str, allow_any_input: bool
) -> _Scorer:
    """The checkpoint's run, ready to score; its notes (synthetic training data, no
    calibration, no learned check) printed once on stderr, away from the CSV on stdout."""
    run = load_run(checkpoint, device=device)
    scorer = scorer_for(run, operating_point=operating_point, allow_any_input=allow_any_input)
    for line in (synthetic_warning(checkpoint, run.stats), *scorer.notes):
        if line:
            print(line, file=sys.stderr)
    return scorer


def scorer_for(
    run: Run, *, operating_point: str = DEFAULT_OPERATING_POINT, allow_any_input: bool = False
) -> _Scorer:
    """A loaded run (`core.checkpoint.load_run`) ready to score new files: its calibration,
    operating point and learned check, the input geometry of its validation."""
    cal, threshold, note = run_calibration(run.folder, run.sha256, operating_point)
    ood, ood_note = run_ood(run.folder, run.sha256)
    return _Scorer(
        model=run.model,
        stats=run.stats,
        device=run.device,
        size_in=run.stats.size,
        size_out=run.config.image_size,
        on_device=warp_on_device(run.device, gpu_augment=run.config.gpu_augment),
        amp=amp_dtype(run.device, run.config.amp),
        cal=cal,
        threshold=threshold,
        ood=ood,
        allow_any_input=allow_any_input,
        notes=(note, ood_note),
    )


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
    allow_any_input: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """Score every readable file among `inputs` -> (DataFrame, one error line per unreadable
    file or empty input, and one for overlays that could not be written).

    Columns: `file, probability, probability_raw, positive, in_distribution, ood_score` in
    input order (+ `overlay`, each file's PNG, with `cam_dir`). `probability` is calibrated by
    the run's calibration.json (raw, with one stderr line, without it) and `positive` applies
    `operating_point` (a name in `calibration.OPERATING_POINTS` or a number). An input that
    fails the image checks (`data.film`) or the run's learned check (`evaluate.ood`,
    `ood_score` > 1) has `in_distribution` False, keeps its probability, gets an empty
    `positive` (a decision with `allow_any_input`) and one warning line. With `cam_dir`, one
    CAM overlay PNG per scored file (`cam.cam`, default layer), named by `overlay_names`.
    `reduced` keeps the cache's reduced-scale JPEG decode (as `preprocess` does by default)."""
    scorer = _scorer(
        checkpoint, device=device, operating_point=operating_point, allow_any_input=allow_any_input
    )
    files, errors = expand_inputs(inputs)
    named = named_files(inputs)
    names = dict(zip(files, overlay_names(files), strict=True))
    overlays = _Overlays(None if cam_dir is None else Path(cam_dir))
    rows: list[dict] = []
    batches = range(0, len(files), max(1, batch_size))
    for start in progress_bar(
        batches, desc="predict", leave=False, disable=not progress, file=sys.stderr
    ):
        chunk = files[start : start + batch_size]
        ok, images, problems, failed = _read_batch(
            chunk, scorer.size_in, reduced=reduced, named=named
        )
        errors += failed
        if not ok:
            continue
        batch = np.stack(images)  # (B, S, S) uint8
        x, logits, features = scorer.forward(batch)
        new = scorer.rows(ok, logits, features, problems)
        if overlays.folder is not None:
            maps = cam(scorer.model, x)[0] if overlays.wanted else None
            overlays.save([names[f] for f in ok], batch, maps,
                          [r["probability"] for r in new])  # fmt: skip
        rows += new
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"positive": "boolean"})
    if overlays.folder is not None:
        df[OVERLAY] = overlays.written
    if overlays.failed:
        errors.append(overlays.failed)
    return df, errors


def predict_cli(
    checkpoint: str | Path,
    inputs: Sequence[str],
    *,
    out_csv: str | Path | None = None,
    cam_dir: str | Path | None = None,
    device: str = "auto",
    operating_point: str = DEFAULT_OPERATING_POINT,
    allow_any_input: bool = False,
) -> int:
    """`python -m pneumolib predict`: the CSV of `predict_files` to stdout (or `out_csv`,
    written under a temporary name and renamed), one stderr line per unreadable file. Where
    the CSV or the overlays cannot be written, one line names the destination and the scores
    go to stdout: a scored run is never lost. Returns the exit code: 1 if any input or output
    failed, else 0 (inputs flagged as not chest films do not count)."""
    if cam_dir is not None and Path(cam_dir).exists() and not Path(cam_dir).is_dir():
        raise UsageError(f"--cam {cam_dir}: exists and is not a folder")
    df, errors = predict_files(
        checkpoint,
        inputs,
        device=device,
        cam_dir=cam_dir,
        progress=True,
        operating_point=operating_point,
        allow_any_input=allow_any_input,
    )
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    where = "" if out_csv is None else f" -> {out_csv}"
    if out_csv is not None:
        try:
            out = Path(out_csv)
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, lambda p: df.to_csv(p, index=False))  # never a half-written CSV
        except OSError as e:
            print(f"error: {out_csv}: cannot write the CSV ({e.strerror or e}); the scores "
                  "follow on stdout", file=sys.stderr)  # fmt: skip
            errors.append(str(out_csv))
            out_csv, where = None, " (on stdout)"
    if out_csv is None:
        df.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    flagged = int((~df["in_distribution"]).sum()) if len(df) else 0
    print(
        f"scored {len(df)} file(s) ({flagged} flagged as not like a chest film), "
        f"{len(errors)} failed{where}",
        file=sys.stderr,
    )
    return 1 if errors else 0
