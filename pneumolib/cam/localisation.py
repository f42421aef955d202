"""Localisation against the expert boxes: does a map point where the radiologists drew?

Per image: `pointing_game` (the map's maximum lies in a box), `energy_in_box` (the share of the
map's mass inside the boxes) and `box_area_fraction` (the share of the image the boxes cover:
the chance level of both). `localisation_scores` tabulates them and `summarize_localisation`
gives means with bootstrap CIs. Maps are (B, H, W) arrays or tensors (`pneumolib.cam.maps`); boxes
are [[x, y, w, h], ...] in the map's pixels, or the JSON strings of the cache's index.csv.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from pneumolib.base.fmt import with_ci

Box = Sequence[float]  # [x, y, w, h] in image pixels
Boxes = Sequence[Box]  # all boxes of one image


# --- localisation against the expert boxes -----------------------------------------------


def as_numpy(maps: Tensor | np.ndarray) -> np.ndarray:
    """Maps (B, H, W), tensor or array -> float64 numpy (B, H, W); any other shape raises."""
    if isinstance(maps, Tensor):
        maps = maps.detach().float().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps: expected shape (B, H, W), got {maps.shape}")
    return maps


def parse_boxes(boxes: Boxes | str) -> list[list[float]]:
    """One image's boxes; a JSON string (as stored in the cache's index.csv) is parsed."""
    if isinstance(boxes, str):
        boxes = json.loads(boxes) if boxes.strip() else []
    out = [list(map(float, b)) for b in boxes]
    if any(len(b) != 4 for b in out):
        raise ValueError(f"boxes: expected [x, y, w, h] entries, got {boxes}")
    return out


def scale_boxes(boxes: Boxes | str, factor: float) -> list[list[float]]:
    """Boxes [x, y, w, h] multiplied by `factor` (e.g. model input size / cache size)."""
    return [[v * factor for v in b] for b in parse_boxes(boxes)]


def box_mask(boxes: Boxes | str, height: int, width: int) -> np.ndarray:
    """Union of the boxes as a bool mask (H, W); a pixel is inside when its centre is."""
    mask = np.zeros((height, width), dtype=bool)
    rows = np.arange(height) + 0.5
    cols = np.arange(width) + 0.5
    for x, y, w, h in parse_boxes(boxes):
        inside_r = (rows >= y) & (rows < y + h)
        inside_c = (cols >= x) & (cols < x + w)
        mask |= inside_r[:, None] & inside_c[None, :]
    return mask


def _check_batch(maps: np.ndarray, boxes: Sequence[Boxes | str]) -> None:
    if len(boxes) != len(maps):
        raise ValueError(f"boxes: got {len(boxes)} lists of boxes for {len(maps)} maps")


def box_distance(boxes: Boxes | str, x: float, y: float) -> float:
    """Distance in pixels from the point (x, y) to the nearest box; 0 inside one, inf if none."""
    best = np.inf
    for bx, by, bw, bh in parse_boxes(boxes):
        dx = max(bx - x, 0.0, x - (bx + bw))
        dy = max(by - y, 0.0, y - (by + bh))
        best = min(best, float(np.hypot(dx, dy)))
    return best


def pointing_game(
    maps: Tensor | np.ndarray, boxes: Sequence[Boxes | str], tolerance: float = 0.0
) -> np.ndarray:
    """Hit (B,) bool: the map's maximum lies inside one of the image's boxes, or with
    `tolerance` > 0 within that many pixels of one (Zhang et al. 2018 allow 15 px at their
    input size: the peak of a coarse map is only known to within a cell). A map with no maximum
    (constant, e.g. all zero) points nowhere and counts as a miss."""
    maps = as_numpy(maps)
    _check_batch(maps, boxes)
    hits = np.zeros(len(maps), dtype=bool)
    for i, (m, b) in enumerate(zip(maps, boxes, strict=True)):
        if m.max() <= m.min():
            continue
        r, c = np.unravel_index(np.argmax(m), m.shape)
        if tolerance > 0:
            hits[i] = box_distance(b, c + 0.5, r + 0.5) <= tolerance  # from the pixel's centre
        else:
            hits[i] = box_mask(b, *m.shape)[r, c]
    return hits


def energy_in_box(maps: Tensor | np.ndarray, boxes: Sequence[Boxes | str]) -> np.ndarray:
    """Share (B,) of each map's total mass inside the union of its boxes; 0 for an all-zero
    map (no evidence anywhere is no evidence in the box)."""
    maps = as_numpy(maps)
    _check_batch(maps, boxes)
    out = np.zeros(len(maps))
    for i, (m, b) in enumerate(zip(maps, boxes, strict=True)):
        m = np.clip(m, 0, None)
        total = m.sum()
        if total > 0:
            out[i] = m[box_mask(b, *m.shape)].sum() / total
    return out


def box_area_fraction(boxes: Sequence[Boxes | str], height: int, width: int) -> np.ndarray:
    """Share (B,) of the image covered by the union of its boxes: the chance level of both
    the pointing game (a random point) and energy-in-box (a uniform map)."""
    return np.array([box_mask(b, height, width).mean() for b in boxes], dtype=np.float64)


def localisation_scores(
    patient_ids: Sequence[str],
    maps: Tensor | np.ndarray,
    boxes: Sequence[Boxes | str],
    tolerance: float = 0.0,
) -> pd.DataFrame:
    """Per-image scores for true positives: columns patientId, pointing_hit, energy_in_box,
    box_area_fraction. maps (B, H, W); boxes in the maps' pixel coordinates; `tolerance` is the
    pointing game's, in pixels (0: the peak must lie inside a box)."""
    maps = as_numpy(maps)
    _check_batch(maps, boxes)
    if len(patient_ids) != len(maps):
        raise ValueError(f"patient_ids: got {len(patient_ids)} ids for {len(maps)} maps")
    for pid, b in zip(patient_ids, boxes, strict=True):
        if not parse_boxes(b):
            raise ValueError(f"boxes: patient {pid} has no box; score only images with boxes")
    h, w = maps.shape[1:]
    return pd.DataFrame(
        {
            "patientId": list(patient_ids),
            "pointing_hit": pointing_game(maps, boxes, tolerance),
            "energy_in_box": energy_in_box(maps, boxes),
            "box_area_fraction": box_area_fraction(boxes, h, w),
        }
    )


def summarize_localisation(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Means with 95% percentile-bootstrap CIs (images resampled, seeded) of pointing_hit,
    energy_in_box, box_area_fraction (chance) and the paired lifts over chance
    (`pointing_lift` = hit - chance, `energy_lift` = energy - chance). Keys: n, then for each
    quantity `<name>`, `<name>_ci_low`, `<name>_ci_high`; NaN when df is empty."""
    values = {
        "pointing_hit": df["pointing_hit"].to_numpy(dtype=np.float64),
        "energy_in_box": df["energy_in_box"].to_numpy(dtype=np.float64),
        "box_area_fraction": df["box_area_fraction"].to_numpy(dtype=np.float64),
    }
    values["pointing_lift"] = values["pointing_hit"] - values["box_area_fraction"]
    values["energy_lift"] = values["energy_in_box"] - values["box_area_fraction"]
    n = len(df)
    out: dict[str, float | int] = {"n": n}
    # One set of resampled indices for every quantity, so the lifts stay paired.
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n else None
    for name, v in values.items():
        if idx is None:
            out[name] = out[f"{name}_ci_low"] = out[f"{name}_ci_high"] = float("nan")
            continue
        boot = v[idx].mean(axis=1)
        out[name] = float(v.mean())
        out[f"{name}_ci_low"] = float(np.percentile(boot, 2.5))
        out[f"{name}_ci_high"] = float(np.percentile(boot, 97.5))
    return out


def format_localisation(s: dict[str, Any]) -> str:
    """One line: pointing game and energy-in-box with CIs, against their chance level."""

    def ci(name: str) -> str:
        return with_ci(s[name], [s[name + "_ci_low"], s[name + "_ci_high"]], digits=2)

    return (
        f"{s['method']} {s['layer']} {s['split']} ({s['n']} true positives): pointing game "
        f"{ci('pointing_hit')} vs chance {s['box_area_fraction']:.2f}; energy in box "
        f"{ci('energy_in_box')} vs chance {ci('box_area_fraction')}"
    )


def localisation_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per named `cam_run` summary: n, pointing game, energy in box and their chance
    level (the box area fraction), each value followed by its 95% CI as "[low, high]"."""
    rows = {}
    for name, s in summaries.items():
        row: dict[str, Any] = {"n": s["n"]}
        for key, label in (
            ("pointing_hit", "pointing game"),
            ("energy_in_box", "energy in box"),
            ("box_area_fraction", "chance (box area)"),
        ):
            row[label] = round(float(s[key]), 3)
            row[f"{label} 95% CI"] = f"[{s[key + '_ci_low']:.2f}, {s[key + '_ci_high']:.2f}]"
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
