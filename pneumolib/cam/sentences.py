"""What notebook 05's results show, as sentences a cell prints: each map's pointing game against
chance (`pointing_verdicts`), the shortcut study (`shortcut_verdicts`) and the ceiling a map's
grid puts on the pointing game (`resolution_sentence`). Every number is read from what
`cam_run`, `shortcut_table` or the boxes hold; none is typed in."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pneumolib.cam.localisation import (
    Boxes,
    box_mask,
    parse_boxes,
    pointing_game,
    scale_boxes,
)


def _pct(x: float, sign: str = "") -> str:
    """A share as a whole percentage, with more decimals where that would read as a false 0
    ("-0.04%", not "-0%"); `sign` "+" writes the sign of a difference."""
    for digits in (0, 1, 2):
        text = f"{x:{sign}.{digits}%}"
        if x == 0 or any(ch in "123456789" for ch in text):
            return text
    return text


def _against_chance(lo: float, hi: float) -> str:
    """The verdict of a paired 95% interval of (score - chance)."""
    ci = f"[{_pct(lo, '+')}, {_pct(hi, '+')}]"
    if lo > 0:
        return f"above chance (paired difference {ci})"
    if hi < 0:
        return f"below chance (paired difference {ci})"
    return f"not shown to differ from chance (paired difference {ci} holds 0)"


def pointing_verdicts(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per named `cam_run` summary (as `localisation_table` takes them): the
    pointing game and the energy in box with their 95% CIs, each against its chance level (the
    share of the image the boxes cover) and judged by the paired interval of the lift."""
    out = []
    for name, s in summaries.items():
        if not s["n"]:
            out.append(
                f"{name}: no true positive to score on {s['split']} (no positive with a box was "
                f"called at probability {s['threshold']:g} or more), so the map has nothing to "
                "point at."
            )
            continue
        hit, energy = s["pointing_hit"], s["energy_in_box"]
        out.append(
            f"{name} ({s['split']}, {s['n']} true positives): the peak lands in an expert box for "
            f"{_pct(hit)} [{_pct(s['pointing_hit_ci_low'])}, {_pct(s['pointing_hit_ci_high'])}] "
            f"of them against a chance of {_pct(s['box_area_fraction'])}: "
            f"{_against_chance(s['pointing_lift_ci_low'], s['pointing_lift_ci_high'])}; "
            f"{_pct(energy)} of the evidence lies in the boxes: "
            f"{_against_chance(s['energy_lift_ci_low'], s['energy_lift_ci_high'])}."
        )
    return out


def _auc(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


SHORTCUT_ROWS = (
    "clean model, clean films",
    "marker model, films with marker",
    "marker model, marker removed",
)


def shortcut_verdicts(table: pd.DataFrame, layer: str = "layer4") -> list[str]:
    """Two sentences on a `shortcut_table`: the marker model's test AUC with and without the
    marker against the clean model's (overall and on AP films, where the marker is), then how
    much of its `layer` map lies on the marker against the clean model and the marker's share
    of the image."""
    missing = [r for r in SHORTCUT_ROWS if r not in table.index]
    if missing:
        raise ValueError(f"table: expected the rows of shortcut_table, missing {missing}")
    clean, marked, removed = (table.loc[r] for r in SHORTCUT_ROWS)
    auc = (clean["ROC AUC"], marked["ROC AUC"], removed["ROC AUC"])
    if not all(math.isfinite(a) for a in auc):
        gap = "these films hold one class only, so the AUCs cannot be compared"
    elif auc[2] < auc[0]:
        gap = (
            f"{auc[0] - auc[2]:.3f} below the clean model: part of what it learned was the text, "
            "not the lungs"
        )
    else:
        gap = "not below the clean model: on these films it learned the lungs as well"
    first = (
        f"The marker model scores test AUC {_auc(auc[1])} on films with the marker against "
        f"{_auc(auc[0])} for the clean model; with the marker removed from the same films it "
        f"scores {_auc(auc[2])}, {gap}. On AP films, where the marker is: "
        f"{_auc(marked['AUC on AP'])} with it, {_auc(removed['AUC on AP'])} without "
        f"(clean model {_auc(clean['AUC on AP'])})."
    )
    share = float(marked["marker's share of image"])
    ev, ev_clean = float(marked["evidence on marker"]), float(clean["evidence on marker"])
    second = (
        f"On the films that carry the marker, the marker model's {layer} map reaches "
        f"{marked['map on marker (max)']:.2f} on it (maps run 0 to 1; the clean model's "
        f"{clean['map on marker (max)']:.2f} at the same spot), and {ev:.1%} of its evidence "
        f"lies there, {ev / share:.1f} times the marker's share of the image ({share:.1%}; "
        f"the clean model {ev_clean:.1%})."
    )
    return [first, second]


def pointing_ceiling(
    boxes: Sequence[Boxes | str], size: int, stride: int, box_scale: float = 1.0
) -> np.ndarray:
    """(B,) bool: whether the best map a layer of `stride`-pixel cells can draw puts its peak in
    a box. That map gives each cell the share of it the image's boxes cover and is upsampled
    bilinearly to `size` px, as CAM upsamples its maps; it is then scored by `pointing_game`.
    Boxes are [x, y, w, h] (a list or index.csv's JSON) times `box_scale` in `size`-pixel
    coordinates (e.g. `box_scale` = input size / cache size); `size` a multiple of `stride`."""
    if size % stride:
        raise ValueError(f"size {size} is not a multiple of the stride {stride}")
    if not len(boxes):
        return np.zeros(0, dtype=bool)
    boxes = [scale_boxes(b, box_scale) for b in boxes]
    g = size // stride
    out = []
    for i in range(0, len(boxes), 256):  # in chunks: a few MB of masks at a time
        part = boxes[i : i + 256]
        masks = np.stack([box_mask(b, size, size) for b in part]).astype(np.float32)  # (b, S, S)
        cells = masks.reshape(len(part), g, stride, g, stride).mean(axis=(2, 4))  # (b, g, g)
        maps = F.interpolate(
            torch.from_numpy(cells)[:, None],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        out.append(pointing_game(maps, part))
    return np.concatenate(out)


def resolution_sentence(
    boxes: Sequence[Boxes | str],
    *,
    size: int,
    stride: int,
    layer: str = "layer4",
    box_scale: float = 1.0,
) -> str:
    """How many of these images with a box even a perfect map on `layer`'s grid (cells of
    `stride` px at `size` px) could hit in the pointing game (`pointing_ceiling`, same
    arguments; images without a box are left out), as a sentence."""
    hits = pointing_ceiling([b for b in boxes if parse_boxes(b)], size, stride, box_scale)
    if not len(hits):
        return f"{layer}: no image with a box to score."
    g = size // stride
    return (
        f"On {layer} ({g}×{g} cells of {stride} px at {size} px) even a perfect map puts its "
        f"peak in a box for {int(hits.sum())} of these {len(hits)} images ({hits.mean():.0%}): "
        "a box that holds no cell's peak cannot be hit, however well the network localises."
    )
