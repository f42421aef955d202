"""Synthetic RSNA-shaped data: chest-radiograph phantoms written as JPEG Baseline DICOMs.

`make_demo_data(out)` writes what the Kaggle zip unpacks to (stage_2_train_images/<uuid>.dcm,
stage_2_train_labels.csv, stage_2_detailed_class_info.csv), so every stage of the pipeline runs
on it unchanged. Each phantom has a body, two dark lung fields, ribs, a spine and heart, and
noise. Positives carry one or two patchy opacities inside the lungs and the boxes record them;
an opacity raises the lung towards soft-tissue grey, it never becomes the brightest structure,
so a model has to learn texture and place, not a threshold. About 22% of patients are positive,
AP views far more often than PA (as in RSNA: ~38% against ~9%). Deterministic for a seed.

How hard the task is is a `Realism` (presets in `REALISM`). `"rsna"`, the demo's default, makes
it hard for the reasons RSNA is hard: faint and small opacities, opacity-like findings on
negatives, labels that disagree with the image about as often as RSNA's readers disagreed, and
portable AP films that look different (lower contrast, noisier, magnified heart). `"easy"` has
none of that (crisp signal, for tests that need one). `shortcut=True` burns a "PORTABLE"
marker into the AP films of the sickest patients (every AP film labelled positive, a quarter
of the negative ones), a planted shortcut that pays to read, for notebook 05 to catch. What
each image really shows, and which labels are noisy, is written beside the data in
`demo_truth.csv` (not part of RSNA).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import pandas as pd

from pneumolib.base.progress import bar as progress_bar
from pneumolib.data.dicom_write import write_dicom
from pneumolib.data.kaggle import TEST_DIR
from pneumolib.data.labels import CLASSES_CSV, IMAGES_DIR, LABELS_CSV
from pneumolib.data.provenance import (
    DEMO_PARAMS,
    PROVENANCE_JSON,
    SYNTHETIC_MANUFACTURER,
    TRUTH_CSV,
)
from pneumolib.data.realism import REALISM, Realism, as_realism

P_AP = 0.46  # share of AP views in RSNA (12,173 / 26,684)
P_POS = {"AP": 0.38, "PA": 0.09}  # P(positive | view)
P_NOT_NORMAL = 0.57  # among negatives: "No Lung Opacity / Not Normal" vs "Normal"
_BASE = 256  # anatomy is drawn at this side, then resized; noise is added at full size
N_TEST = 8  # unlabelled films in the demo's test folder, as Kaggle's stage_2_test_images/
# The format's name, kept when the module moved to data.synth: existing demo folders stay valid.
GENERATOR = "pneumolib.synth v3"


MARKER_TEXT, MARKER_ORIGIN = "PORTABLE", (10, 22)  # the shortcut, drawn at _BASE px


def marker_box(size: int) -> list[float]:
    """[x, y, w, h] in pixels of a `size` x `size` image: where the shortcut's text lies."""
    (w, h), base = cv2.getTextSize(MARKER_TEXT, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 2)
    x, y = MARKER_ORIGIN[0] - 2, MARKER_ORIGIN[1] - h - 2  # thickness reaches past the glyphs
    return [v * size / _BASE for v in (x, y, w + 4, h + base + 4)]


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _box(mask: np.ndarray, k: float) -> list[float] | None:
    """Bounding box [x, y, w, h] of `mask` (at _BASE), scaled by `k`; None when empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    x0, y0 = xs.min(), ys.min()
    return [
        float(x0 * k),
        float(y0 * k),
        float((xs.max() - x0 + 1) * k),
        float((ys.max() - y0 + 1) * k),
    ]


def _opacity(rng, yy, xx, lung, small: bool) -> np.ndarray:
    """A patchy opacity inside one lung (lcx, lcy, rx, ry) -> density mask (_BASE, _BASE)."""
    lcx, lcy, rx, ry = lung
    ocx, ocy = lcx + rng.uniform(-0.35, 0.35) * rx, lcy + rng.uniform(-0.3, 0.5) * ry
    orx, ory = rx * rng.uniform(0.45, 0.8), ry * rng.uniform(0.3, 0.55)
    if small:
        orx, ory = orx * 0.5, ory * 0.5
    e = _ellipse(yy, xx, ocy, ocx, ory, orx)
    blotch = cv2.GaussianBlur(rng.random(yy.shape).astype(np.float32), (0, 0), 3)
    blotch = (blotch - blotch.min()) / (np.ptp(blotch) + 1e-6)
    return np.clip(1.0 - e, 0, 1) ** 0.7 * (0.5 + blotch)


def _mimic(rng, yy, xx, lung, kind: str) -> np.ndarray:
    """An opacity-like finding that is not pneumonia -> density mask (_BASE, _BASE).

    "band": plate atelectasis, a thin dense band across the lower lung; "overlap": a smooth
    round density where soft tissue overlaps the lung base (breast shadow, a vessel crossing).
    """
    lcx, lcy, rx, ry = lung
    if kind == "band":
        cy = lcy + ry * rng.uniform(0.3, 0.65)
        tilt = rng.uniform(-0.25, 0.25)
        line = (yy - cy - tilt * (xx - lcx)) / (ry * rng.uniform(0.04, 0.07))
        along = (xx - lcx) / (rx * rng.uniform(0.6, 0.9))
        return np.exp(-(line**2)) * np.clip(1 - along**2, 0, 1) * 1.3
    cx, cy = lcx + rng.uniform(-0.3, 0.3) * rx, lcy + ry * rng.uniform(0.35, 0.7)
    e = _ellipse(yy, xx, cy, cx, ry * rng.uniform(0.2, 0.3), rx * rng.uniform(0.45, 0.7))
    return np.clip(1.0 - e, 0, 1) ** 1.5 * 0.9


def _anatomy(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, *, view: str
) -> tuple[np.ndarray, list[tuple[float, float, float, float]], float]:
    """A normal chest at _BASE px -> (float32 image, lungs [(cx, cy, rx, ry)] x 2, midline x)."""
    n = _BASE
    cx = n / 2 + rng.normal(0, 4)
    img = np.full((n, n), 12.0, np.float32)  # air
    body = _ellipse(yy, xx, n * 0.55, cx, n * 0.52, n * rng.uniform(0.40, 0.46))
    img += 115.0 * (body < 1)  # soft tissue
    lungs = []
    heart_r = n * (0.13 if view == "AP" else 0.11) * rng.uniform(0.9, 1.15)  # AP magnifies heart
    for side in (-1, 1):
        lcx = cx + side * n * rng.uniform(0.17, 0.2)
        lcy, ry, rx = (
            n * rng.uniform(0.44, 0.48),
            n * rng.uniform(0.25, 0.29),
            n * rng.uniform(0.11, 0.135),
        )
        e = _ellipse(yy, xx, lcy, lcx, ry, rx)
        lungs.append((lcx, lcy, rx, ry))
        img -= 70.0 * np.clip(1.4 - e, 0, 1) * (e < 1.4)  # dark lung field, soft edge
    # ribs: bright bands curving over the lungs
    for k in range(9):
        y0 = n * (0.22 + 0.06 * k) + rng.normal(0, 1.5)
        curve = y0 + 0.0022 * (xx - cx) ** 2 * rng.uniform(0.8, 1.2)
        img += 28.0 * np.exp(-(((yy - curve) / 2.6) ** 2)) * (body < 1)
    img += 95.0 * np.exp(-(((xx - cx) / (n * 0.035)) ** 2)) * (yy > n * 0.1)  # spine
    heart = _ellipse(yy, xx, n * 0.62, cx + n * 0.05, heart_r, heart_r * 1.2)
    img += 55.0 * np.clip(1.3 - heart, 0, 1)  # heart / mediastinum
    return img, lungs, cx


def phantom(
    rng: np.random.Generator,
    size: int,
    *,
    view: str,
    positive: bool,
    not_normal: bool = False,
    faint: bool = False,
    small: bool = False,
    mimic: str | None = None,
    reader_box: bool = False,
    marker: bool = False,
    realism: Realism = REALISM["easy"],
) -> tuple[np.ndarray, list[list[float]]]:
    """One radiograph phantom -> (uint8 (size, size), boxes [[x, y, w, h], ...] in pixels).

    `faint`/`small` weaken a positive's opacities, `mimic` ("band" | "overlap") draws an
    opacity-like finding, whose box is the second element's only entry when not `positive`;
    `reader_box` returns a box on a negative where nothing is drawn (a reader's over-call);
    `marker` burns the shortcut's text into the film.
    `realism` brings the film-level effects (portable AP films, coarse noise).
    With the defaults the output is the "easy" phantom, the same for a seed as ever.
    """
    n = _BASE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    img, lungs, cx = _anatomy(rng, yy, xx, view=view)
    if not_normal:  # a non-pneumonia finding: a tube or wire line
        x0 = cx + rng.uniform(-n * 0.05, n * 0.05)
        img += (
            70.0
            * np.exp(-(((xx - x0 - 0.15 * (yy - n * 0.2)) / 1.2) ** 2))
            * (yy > n * 0.15)
            * (yy < n * 0.6)
        )
    k = size / n
    boxes: list[list[float]] = []
    if positive:
        n_op = 1 if small or rng.random() < 0.55 else 2
        gain = 55.0 * (rng.uniform(0.25, 0.5) if faint else 1.0)
        for s in rng.permutation(2)[:n_op]:
            mask = _opacity(rng, yy, xx, lungs[s], small)
            img += gain * mask  # lung (~60) rises towards soft tissue (~115), below bone/spine
            if (b := _box(mask > 0.15, k)) is not None:
                boxes.append(b)
    if mimic is not None:
        mask = _mimic(rng, yy, xx, lungs[int(rng.integers(2))], mimic)
        img += 50.0 * mask
        if not positive and (b := _box(mask > 0.3, k)) is not None:
            boxes.append(b)  # where a reader who over-calls it would draw the box
    elif reader_box and not positive:  # a box where the image shows nothing
        shape = _opacity(rng, yy, xx, lungs[int(rng.integers(2))], small=False)
        boxes += [b for b in [_box(shape > 0.15, k)] if b is not None]
    portable = realism.portable if view == "AP" else 0.0  # bedside films only
    img = _film(rng, img, realism, portable=portable, marker=marker)
    if size != n:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    sd = 6.0 * _noise_gain(portable)
    img += rng.normal(0, sd, (size, size)).astype(np.float32)  # quantum noise
    return np.clip(img, 0, 255).astype(np.uint8), [[round(v, 1) for v in b] for b in boxes]


def _noise_gain(portable: float) -> float:
    """How much noisier a film is at this portable level (a small detector dose)."""
    return 1 + 0.6 * portable


def _film(
    rng: np.random.Generator, img: np.ndarray, r: Realism, *, portable: float, marker: bool
) -> np.ndarray:
    """Blur, exposure and the film-level effects of `r` on a (_BASE, _BASE) float image."""
    img = cast(np.ndarray, cv2.GaussianBlur(img, (0, 0), 1.2))  # float in, float out
    img *= rng.uniform(0.85, 1.15)  # exposure
    if portable:  # bedside film: scatter lowers contrast, a small detector dose adds noise
        img = img.mean() + (img - img.mean()) * (1 - 0.2 * portable)
    if r.mottle:
        sd = r.mottle * _noise_gain(portable)
        img += cv2.GaussianBlur(rng.normal(0, sd, img.shape).astype(np.float32), (0, 0), 0.8) * 2
    if marker:  # the burned-in text portable films carry
        text = np.zeros(img.shape, np.uint8)  # OpenCV draws text on 8-bit images only
        cv2.putText(text, MARKER_TEXT, MARKER_ORIGIN, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 2)
        img[text > 0] = 250.0
    return img


def _patient(rng: np.random.Generator) -> dict:
    view = "AP" if rng.random() < P_AP else "PA"
    positive = bool(rng.random() < P_POS[view])
    cls = (
        "Lung Opacity"
        if positive
        else ("No Lung Opacity / Not Normal" if rng.random() < P_NOT_NORMAL else "Normal")
    )
    return {
        "patientId": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        "view": view,
        "positive": positive,
        "class": cls,
        "sex": "M" if rng.random() < 0.57 else "F",
        "age": int(np.clip(rng.normal(47, 16), 1, 92)),
    }


def _findings(aux: np.random.Generator, p: dict, r: Realism) -> dict:
    """What `r` adds to patient `p`: faint/small opacities, a mimic, a line, label noise and
    the shortcut's marker.

    Drawn from a stream of their own, so the "easy" preset stays what it always was. Readers
    disagree most on what is hard to see: faint opacities are missed 1.5 times as often as
    the rest, and half the over-calls fall on mimics; the rest are boxes on nothing visible.
    """
    u = aux.random(6)
    f = {"faint": False, "small": False, "mimic": None, "noise": ""}
    f["line"] = p["class"] != "Normal"
    if p["positive"]:
        f["faint"], f["small"] = bool(u[0] < r.faint), bool(u[1] < r.small)
        p_faint = min(1.0, 1.5 * r.missed)
        p_rest = max(0.0, (r.missed - r.faint * p_faint) / max(1e-9, 1 - r.faint))
        f["line"] = bool(u[2] < r.line_on_positives)
        if u[3] < (p_faint if f["faint"] else p_rest):
            f["noise"] = "missed"
    else:
        if p["class"] != "Normal" and u[0] < min(1.0, r.mimics / P_NOT_NORMAL):
            f["mimic"] = "band" if u[1] < 0.5 else "overlap"
        share = r.mimics if f["mimic"] else 1 - r.mimics
        if u[3] < min(1.0, 0.5 * r.overcalled / max(share, 1e-9)):
            f["noise"] = "overcalled"
    labelled = f["noise"] == "overcalled" if not p["positive"] else f["noise"] != "missed"
    f["marker"] = r.shortcut and p["view"] == "AP" and (labelled or bool(u[4] < 0.25))
    return f


def make_demo_data(
    out: str | Path,
    *,
    n: int = 300,
    size: int = 1024,
    seed: int = 0,
    realism: str | Realism = "rsna",
    shortcut: bool | None = None,
) -> Path:
    """Write an RSNA-shaped folder of `n` phantom DICOMs (size x size) into `out`; returns it.

    `realism`: a preset name from `REALISM` ("rsna", the default, or "easy") or a `Realism`;
    `shortcut=True` adds the AP marker to it. Beside the labelled films, `stage_2_test_images/`
    holds N_TEST unlabelled ones (patientId = file stem, as Kaggle's test folder), drawn from
    their own random stream so the labelled films are the same for a seed with or without it.
    Idempotent: a folder made with the same settings is left as it is (its test folder added
    where it lacks one); a different one is refused. The folder appears only when complete
    (built beside it, then renamed).
    """
    out = Path(out)
    r = as_realism(realism, shortcut)
    params = {"n": n, "size": size, "seed": seed, "generator": GENERATOR}
    params["realism"] = dataclasses.asdict(r)
    if _made_already(out, params):
        if not (out / TEST_DIR).is_dir():
            _write_test_folder(out / TEST_DIR, r=r, size=size, seed=seed)
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGES_DIR).mkdir(parents=True)
    rng, aux = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    label_rows, class_rows, truth = [], [], []
    for _ in progress_bar(range(n), desc="demo DICOMs", unit="img", leave=False):
        labels, classes, row = _write_patient(rng, aux, r, size, tmp / IMAGES_DIR)
        label_rows += labels
        class_rows += classes
        truth.append(row)
    pd.DataFrame(label_rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        tmp / LABELS_CSV, index=False
    )
    pd.DataFrame(class_rows, columns=["patientId", "class"]).to_csv(tmp / CLASSES_CSV, index=False)
    cols = ["patientId", "view", "opacity", "label", "label_noise", "faint", "small", "mimic"]
    pd.DataFrame(truth, columns=[*cols, "marker"]).to_csv(tmp / TRUTH_CSV, index=False)
    (tmp / DEMO_PARAMS).write_text(json.dumps(params))
    marker = {"synthetic": True, "generator": GENERATOR, "made_by": "pneumolib.synth"}
    (tmp / PROVENANCE_JSON).write_text(json.dumps(marker, indent=2))
    _write_test_folder(tmp / TEST_DIR, r=r, size=size, seed=seed)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def _write_test_folder(folder: Path, *, r: Realism, size: int, seed: int) -> None:
    """N_TEST unlabelled phantom DICOMs in `folder` (<patientId>.dcm), from the random stream
    [seed, 2], so the labelled films' streams are untouched; built beside it, then renamed."""
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng([seed, 2])
    for _ in range(N_TEST):
        p = _patient(rng)
        img, _boxes = phantom(rng, size, view=p["view"], positive=p["positive"], realism=r)
        write_dicom(
            tmp / f"{p['patientId']}.dcm",
            img,
            patient_id=p["patientId"],
            sex=p["sex"],
            age=p["age"],
            view=p["view"],
            manufacturer=SYNTHETIC_MANUFACTURER,
        )
    tmp.rename(folder)


def _made_already(out: Path, params: dict) -> bool:
    """True when `out` holds demo data made with `params`; refused when it holds anything else."""
    marker = out / DEMO_PARAMS
    if marker.exists():
        if json.loads(marker.read_text()) == params:
            return True
        raise FileExistsError(
            f"{out}: holds demo data made with other settings ({marker.read_text()}, not "
            f"{json.dumps(params)}); delete the demo folder (and the cache and runs made from "
            "it) to make it anew"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder exists and is not pneumolib demo data")
    return False


def _write_patient(
    rng: np.random.Generator, aux: np.random.Generator, r: Realism, size: int, images: Path
) -> tuple[list, list, list]:
    """Draw one patient, write its DICOM into `images` -> (label rows, class rows, truth row)."""
    label_rows, class_rows = [], []
    p = _patient(rng)
    f = _findings(aux, p, r)
    img, boxes = phantom(
        rng,
        size,
        view=p["view"],
        positive=p["positive"],
        not_normal=f["line"],
        faint=f["faint"],
        small=f["small"],
        mimic=f["mimic"],
        realism=r,
        reader_box=f["noise"] == "overcalled",
        marker=f["marker"],
    )
    drawn = p["positive"] and bool(boxes)
    label = f["noise"] != "missed" if drawn else f["noise"] == "overcalled" and bool(boxes)
    boxes = boxes if label else []
    if label:
        cls = "Lung Opacity"
    elif drawn:  # an opacity the label does not see
        cls = "No Lung Opacity / Not Normal"
    else:
        cls = "Normal" if p["positive"] else p["class"]
    write_dicom(
        images / f"{p['patientId']}.dcm",
        img,
        patient_id=p["patientId"],
        sex=p["sex"],
        age=p["age"],
        view=p["view"],
        manufacturer=SYNTHETIC_MANUFACTURER,
    )
    no_box: list[list[float | None]] = [[None] * 4]  # one row with empty box columns
    for b in boxes or no_box:
        label_rows.append([p["patientId"], *b, int(label)])
        class_rows.append([p["patientId"], cls])
    noise = f["noise"] if drawn != label else ""
    truth = [p["patientId"], p["view"], int(drawn), int(label), noise, f["faint"],
             f["small"], f["mimic"] or "", f["marker"]]  # fmt: skip
    return label_rows, class_rows, truth
