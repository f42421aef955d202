"""How a run's boxes (RUN/boxes_<split>.csv, written by `cam`) score on the challenge's metric,
overall and per view, and the examples to draw them with.

Boxes and expert boxes meet in the original image's pixels (`data.letterbox.truth_boxes`, the
cache's recorded sizes); pictures are drawn on the cache's images, so `box_examples` converts
both back with the same letterbox rule (`data.letterbox.boxes_to_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumolib.base.errors import UsageError
from pneumolib.base.rundir import boxes_path, report_config
from pneumolib.data.labels import open_cache, open_images, original_sizes
from pneumolib.data.letterbox import boxes_to_cache, truth_boxes
from pneumolib.evaluate.boxes import BoxesScores, read_box_csv, rsna_map


def _split(run: Path, split: str, cache: str | Path | None) -> tuple[pd.DataFrame, Any, Path]:
    """(the split's index rows, the cache stats, the cache folder) of a run."""
    folder = Path(cache or report_config(run).config.cache)
    index, stats = open_cache(folder)
    return index[index["split"] == split].reset_index(drop=True), stats, folder


def read_boxes(run: str | Path, split: str) -> dict[str, BoxesScores]:
    """RUN/boxes_<split>.csv -> {patientId: (boxes (m, 4) original pixels, confidences (m,))}."""
    path = boxes_path(run, split)
    if not path.is_file():
        raise UsageError(f"{path}: not found; run `python -m pneumolib cam --run {run} "
                         f"--split {split}` first")  # fmt: skip
    return read_box_csv(path)


def box_score_table(
    run: str | Path, split: str = "test", *, cache: str | Path | None = None,
    n_boot: int = 1000, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """The challenge's score of RUN/boxes_<split>.csv with its 95% CI over patients: one row
    for all images, then one per view (AP, PA), each with the images that count."""
    rows, stats, folder = _split(Path(run), split, cache)
    heights, widths, note = original_sizes(rows, where=folder / "index.csv")
    if note:
        print(note)
    truth = truth_boxes(rows, cache_size=stats.size, heights=heights, widths=widths)
    predicted = read_boxes(run, split)
    groups = {"all": rows["patientId"]}
    if "view" in rows:
        for view in sorted(rows["view"].dropna().astype(str).unique()):
            groups[view] = rows.loc[rows["view"].astype(str) == view, "patientId"]
    out = []
    for name, ids in groups.items():
        s = rsna_map({p: truth[p] for p in ids}, {p: predicted[p] for p in ids if p in predicted},
                     n_boot=n_boot, seed=seed)  # fmt: skip
        out.append({"images": name, "n_images": s["n_images"], "rsna_map": s["value"],
                    "ci_low": s["ci"][0], "ci_high": s["ci"][1]})  # fmt: skip
    return pd.DataFrame(out).set_index("images")


def box_examples(
    run: str | Path, split: str, ids: Sequence[str], *, cache: str | Path | None = None
) -> tuple[np.ndarray, list[np.ndarray], list[BoxesScores]]:
    """Patients `ids` of a split -> (cache images (k, S, S), expert boxes (n_i, 4) and
    predictions (boxes (m_i, 4), confidences) in those images' pixels), for
    `evaluate.box_figures.box_outcome_grid`."""
    rows, stats, folder = _split(Path(run), split, cache)
    rows = rows.set_index("patientId").loc[list(ids)].reset_index()
    heights, widths, _ = original_sizes(rows, where=folder / "index.csv")
    truth = truth_boxes(rows, cache_size=stats.size, heights=heights, widths=widths)
    predicted = read_boxes(run, split)
    images = open_images(folder)[rows["row"].to_numpy()]
    truths, preds = [], []
    for pid, h, w in zip(rows["patientId"], heights, widths, strict=True):
        size = {"height": int(h), "width": int(w), "size": stats.size}
        truths.append(boxes_to_cache(truth[pid], **size))
        boxes, scores = predicted.get(pid, (np.zeros((0, 4)), np.zeros(0)))
        preds.append((boxes_to_cache(boxes, **size), scores))
    return np.asarray(images), truths, preds
