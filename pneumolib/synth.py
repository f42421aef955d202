"""Synthetic RSNA-shaped data: chest-radiograph phantoms written as JPEG Baseline DICOMs.

`make_demo_data(out)` writes what the Kaggle zip unpacks to (stage_2_train_images/<uuid>.dcm,
stage_2_train_labels.csv, stage_2_detailed_class_info.csv), so every stage of the pipeline runs
on it unchanged. Each phantom has a body, two dark lung fields, ribs, a spine and heart, and
noise. Positives carry one or two patchy opacities inside the lungs and the boxes record them;
an opacity raises the lung towards soft-tissue grey, it never becomes the brightest structure,
so a model has to learn texture and place, not a threshold. About 22% of patients are positive,
AP views far more often than PA (as in RSNA: ~38% against ~9%). Deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pneumolib.dicom import write_dicom

P_AP = 0.46  # share of AP views in RSNA (12,173 / 26,684)
P_POS = {"AP": 0.38, "PA": 0.09}  # P(positive | view)
P_NOT_NORMAL = 0.57  # among negatives: "No Lung Opacity / Not Normal" vs "Normal"
_BASE = 256  # anatomy is drawn at this side, then resized; noise is added at full size


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def phantom(
    rng: np.random.Generator, size: int, view: str, positive: bool, not_normal: bool = False
) -> tuple[np.ndarray, list[list[float]]]:
    """One radiograph phantom -> (uint8 (size, size), boxes [[x, y, w, h], ...] in pixels)."""
    n = _BASE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
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
    if not_normal:  # a non-pneumonia finding: a tube or wire line
        x0 = cx + rng.uniform(-n * 0.05, n * 0.05)
        img += (
            70.0
            * np.exp(-(((xx - x0 - 0.15 * (yy - n * 0.2)) / 1.2) ** 2))
            * (yy > n * 0.15)
            * (yy < n * 0.6)
        )
    boxes: list[list[float]] = []
    if positive:
        n_op = 1 if rng.random() < 0.55 else 2
        sides = rng.permutation(2)[:n_op]
        for s in sides:
            lcx, lcy, rx, ry = lungs[s]
            ocx, ocy = lcx + rng.uniform(-0.35, 0.35) * rx, lcy + rng.uniform(-0.3, 0.5) * ry
            orx, ory = rx * rng.uniform(0.45, 0.8), ry * rng.uniform(0.3, 0.55)
            e = _ellipse(yy, xx, ocy, ocx, ory, orx)
            blotch = cv2.GaussianBlur(rng.random((n, n)).astype(np.float32), (0, 0), 3)
            blotch = (blotch - blotch.min()) / (np.ptp(blotch) + 1e-6)
            mask = np.clip(1.0 - e, 0, 1) ** 0.7 * (0.5 + blotch)
            img += 55.0 * mask  # lung (~60) rises towards soft tissue (~115), below bone/spine
            ys, xs = np.nonzero(mask > 0.15)
            if len(xs):
                k = size / n
                boxes.append(
                    [
                        float(xs.min() * k),
                        float(ys.min() * k),
                        float((xs.max() - xs.min() + 1) * k),
                        float((ys.max() - ys.min() + 1) * k),
                    ]
                )
    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    img *= rng.uniform(0.85, 1.15)  # exposure
    if size != n:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    img += rng.normal(0, 6.0, (size, size)).astype(np.float32)  # quantum noise
    return np.clip(img, 0, 255).astype(np.uint8), [[round(v, 1) for v in b] for b in boxes]


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


def make_demo_data(out: str | Path, n: int = 300, size: int = 1024, seed: int = 0) -> Path:
    """Write an RSNA-shaped folder of `n` phantom DICOMs (size x size) into `out`; returns it.

    Idempotent: a folder made with the same (n, size, seed) is left as it is; a different one
    is refused. The folder appears only when complete (built beside it, then renamed).
    """
    out = Path(out)
    params = {"n": n, "size": size, "seed": seed, "generator": "pneumolib.synth v1"}
    marker = out / "demo_params.json"
    if marker.exists():
        if json.loads(marker.read_text()) == params:
            return out
        raise FileExistsError(
            f"{out}: holds demo data made with {marker.read_text()}, not {params}"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder exists and is not pneumolib demo data")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "stage_2_train_images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    label_rows, class_rows = [], []
    for _ in tqdm(range(n), desc="demo DICOMs", unit="img", leave=False):
        p = _patient(rng)
        img, boxes = phantom(rng, size, p["view"], p["positive"], p["class"] != "Normal")
        if p["positive"] and not boxes:
            p["positive"], p["class"] = False, "Normal"
        write_dicom(
            tmp / "stage_2_train_images" / f"{p['patientId']}.dcm",
            img,
            p["patientId"],
            sex=p["sex"],
            age=p["age"],
            view=p["view"],
        )
        for b in boxes or [[None] * 4]:
            label_rows.append([p["patientId"], *b, int(p["positive"])])
            class_rows.append([p["patientId"], p["class"]])
    pd.DataFrame(label_rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        tmp / "stage_2_train_labels.csv", index=False
    )
    pd.DataFrame(class_rows, columns=["patientId", "class"]).to_csv(
        tmp / "stage_2_detailed_class_info.csv", index=False
    )
    (tmp / "demo_params.json").write_text(json.dumps(params))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
