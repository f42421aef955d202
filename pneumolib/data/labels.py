"""RSNA labels (one row per patient), patient-level splits, and reading the preprocessed cache.

The RSNA label file has one row per box: a positive patient with three boxes has three rows, a
negative patient one row with empty box columns. `load_labels` collapses that to one row per
patient and checks the file on the way (missing columns, conflicting Target, a box on a negative,
unparsable numbers), naming file, line and column in a one-line `LabelError`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pneumolib.base.errors import PneumolibError, UsageError
from pneumolib.data.cache_check import CacheDamaged, damaged_line, verify_cache
from pneumolib.data.cache_files import images_path, index_path

# Re-exported: `read_index`, `open_images` and `read_stats` read a cache from one place.
from pneumolib.data.cache_stats import CacheStats as CacheStats
from pneumolib.data.cache_stats import read_stats as read_stats

# The RSNA raw folder, declared once: the Kaggle download, the demo data and preprocess use it.
IMAGES_DIR = "stage_2_train_images"  # <patientId>.dcm
LABELS_CSV = "stage_2_train_labels.csv"  # one row per box (or one empty row per negative)
CLASSES_CSV = "stage_2_detailed_class_info.csv"  # one row per box: RSNA's three classes

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
# RSNA's detailed classes, in the three-class head's logit order (pneumonia last; `tasks`), and
# their short names for files, columns and the command line.
CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
CLASS_KEYS = ("normal", "not_normal", "lung_opacity")
# The course split: the first 24,000 unique patients (of 26,684) in CSV order train, rest val.
COURSE_TRAIN_N, RSNA_N = 24_000, 26_684


class LabelError(PneumolibError, ValueError):
    """A label CSV that does not say what it should; the message names file, line and column."""


class SplitError(PneumolibError, ValueError):
    """A split that cannot be evaluated (a split without a positive or a negative)."""


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise LabelError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise LabelError(f"{path}: not a readable CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LabelError(
            f"{path} line 1: missing column(s) {', '.join(missing)} (found {list(df.columns)})"
        )
    return df


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelError(
            f"{path} line {line} column {column}: cannot parse {text!r} as a number"
        ) from None
    if not math.isfinite(value):
        raise LabelError(f"{path} line {line} column {column}: {text!r} is not a finite number")
    return value


def load_labels(labels_csv: str | Path, detailed_csv: str | Path | None = None) -> pd.DataFrame:
    """Read stage_2_train_labels.csv (+ detailed class info) into one row per patient.

    Returns a DataFrame in first-appearance order with columns
    `patientId, target (0/1), class (str, "" when unknown), boxes (list of [x, y, w, h])`.
    """
    path = Path(labels_csv)
    df = _read_csv(path, LABEL_COLUMNS)
    targets: dict[str, int] = {}
    first_line: dict[str, int] = {}
    boxes: dict[str, list[list[float]]] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2  # 1-based, after the header
        pid = str(row.patientId).strip()
        if not pid:
            raise LabelError(f"{path} line {line} column patientId: empty patient id")
        t_text = str(row.Target).strip()
        if t_text not in ("0", "1", "0.0", "1.0"):
            raise LabelError(f"{path} line {line} column Target: expected 0 or 1, got {t_text!r}")
        target = int(float(t_text))
        if pid in targets and targets[pid] != target:
            raise LabelError(
                f"{path} line {line} column Target: patient {pid} has Target {target} here but "
                f"{targets[pid]} on line {first_line[pid]}"
            )
        targets.setdefault(pid, target)
        first_line.setdefault(pid, line)
        boxes.setdefault(pid, [])
        cells = {c: str(getattr(row, c)).strip() for c in ("x", "y", "width", "height")}
        if target == 0:
            filled = [c for c, v in cells.items() if v not in ("", "nan", "NaN")]
            if filled:
                raise LabelError(
                    f"{path} line {line} column {filled[0]}: box on a negative (Target 0)"
                )
            continue
        if all(v in ("", "nan", "NaN") for v in cells.values()):
            raise LabelError(f"{path} line {line} column x: positive (Target 1) without a box")
        box = [_number(path, line, c, v) for c, v in cells.items()]
        if box[2] <= 0 or box[3] <= 0:
            col = "width" if box[2] <= 0 else "height"
            raise LabelError(f"{path} line {line} column {col}: box size must be positive")
        boxes[pid].append(box)
    out = pd.DataFrame(
        {
            "patientId": list(targets),
            "target": [targets[p] for p in targets],
            "class": "",
            "boxes": [boxes[p] for p in targets],
        }
    )
    if detailed_csv is not None and Path(detailed_csv).exists():
        out["class"] = _load_classes(Path(detailed_csv), out)
    return out


def _load_classes(path: Path, labels: pd.DataFrame) -> list[str]:
    df = _read_csv(path, CLASS_COLUMNS)
    cls: dict[str, str] = {}
    for i, (pid, c) in enumerate(zip(df["patientId"], df["class"], strict=True)):
        line, pid, c = i + 2, str(pid).strip(), str(c).strip()
        if c not in CLASSES:
            raise LabelError(f"{path} line {line} column class: unknown class {c!r}")
        if cls.setdefault(pid, c) != c:
            raise LabelError(f"{path} line {line} column class: patient {pid} has two classes")
    target = dict(zip(labels.patientId, labels.target, strict=True))
    for pid, c in cls.items():
        if pid in target and (c == "Lung Opacity") != bool(target[pid]):
            raise LabelError(f"{path}: patient {pid} is class {c!r} but Target {target[pid]}")
    return [cls.get(p, "") for p in labels.patientId]


def make_splits(
    labels: pd.DataFrame,
    *,
    rule: str = "stratified",
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Assign each patient (row) to train/val/test -> str array (N,).

    `stratified`: within every (target, view) stratum, a seeded shuffle puts `test_frac` in test
    and `val_frac` in val, so class and view proportions hold in every split.
    `course`: the first 24,000 unique patients in CSV order train, the rest val (scaled to the
    same 24,000/26,684 share for smaller folders such as the demo).
    """
    n = len(labels)
    split = np.full(n, "train", dtype=object)
    if rule == "course":
        n_train = COURSE_TRAIN_N if n >= RSNA_N else round(n * COURSE_TRAIN_N / RSNA_N)
        split[n_train:] = "val"
        return split
    if rule != "stratified":
        raise UsageError(f"unknown split rule {rule!r}: use one of {', '.join(SPLIT_RULES)}")
    rng = np.random.default_rng(seed)
    view = labels["view"].fillna("NA") if "view" in labels else pd.Series(["NA"] * n)
    strata = labels["target"].astype(str).values + "/" + view.astype(str).values
    for s in sorted(set(strata)):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        n_test, n_val = round(len(idx) * test_frac), round(len(idx) * val_frac)
        split[idx[:n_test]] = "test"
        split[idx[n_test : n_test + n_val]] = "val"
    return split


def check_splittable(
    labels: pd.DataFrame,
    *,
    rule: str = "stratified",
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """`make_splits`, refused with a one-line `SplitError` when a split cannot be evaluated.

    Train, val (when there is one) and test (when asked for) each need at least one positive
    and one negative: without both, AUC is undefined, no epoch can be judged better than
    another and the test figures do not exist. Returns the split array (N,) otherwise.
    """
    split = make_splits(labels, rule=rule, val_frac=val_frac, test_frac=test_frac, seed=seed)
    wanted = ["train", "val"] + (["test"] if rule == "stratified" and test_frac > 0 else [])
    if rule == "stratified" and val_frac <= 0:
        wanted.remove("val")
    target = labels["target"].to_numpy().astype(int)
    n_pos = int(target.sum())
    for name in wanted:
        y = target[split == name]
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        if pos and neg:
            continue
        if rule == "stratified":
            frac = min(f for f in (val_frac, test_frac) if f > 0)
            need = math.floor(0.5 / frac) + 1  # round(need * frac) >= 1 in every split
            how = (
                f"with val_frac {val_frac} and test_frac {test_frac} that takes at least "
                f"{need} positives and {need} negatives (there are {n_pos} positives and "
                f"{len(target) - n_pos} negatives): add images or raise the fractions"
            )
        else:
            how = "the course split puts the last patients of the CSV in val; add images"
        raise SplitError(
            f"the {rule} split leaves {name} with {pos} positives and {neg} negatives; "
            f"train, val and test each need at least one of each, {how}"
        )
    return split


# --- the cache ---------------------------------------------------------------------------

# CACHE/index.csv's columns, in order; `height`, `width`: the original image's size in pixels.
INDEX_COLUMNS = (
    "patientId", "row", "target", "class", "split", "sex", "age", "view", "boxes", "height", "width"
)  # fmt: skip
ASSUMED_SIZE = 1024  # the original side assumed where a cache did not record it (RSNA's films)


def read_index(cache: str | Path) -> pd.DataFrame:
    """CACHE/index.csv with `boxes` parsed back into lists of [x, y, w, h] (cache pixels)."""
    path = index_path(cache)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no cache index; run `python -m pneumolib preprocess` first"
        )
    df = pd.read_csv(path, dtype={"patientId": str, "class": str, "sex": str, "view": str})
    df["boxes"] = [json.loads(b) if isinstance(b, str) and b else [] for b in df["boxes"]]
    return df


def original_sizes(
    index: pd.DataFrame, *, where: str | Path = "index.csv"
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The original image size of each `index` row: (heights (N,), widths (N,), note). A cache
    made before it recorded `height` and `width` gets ASSUMED_SIZE for both and a one-line
    `note` naming `where` (its index.csv) to print; else the note is None."""
    if {"height", "width"} <= set(index.columns):
        heights, widths = index["height"].to_numpy(), index["width"].to_numpy()
        if not (pd.isna(heights).any() or pd.isna(widths).any()):
            return heights.astype(np.int64), widths.astype(np.int64), None
    n = len(index)
    note = (
        f"note: {where} does not record the original image sizes, so boxes assume "
        f"{ASSUMED_SIZE} x {ASSUMED_SIZE} px images; `preprocess --rebuild` records them"
    )
    full = np.full(n, ASSUMED_SIZE, dtype=np.int64)
    return full, full.copy(), note


LABELS = ("pneumonia", "view")  # what a model can learn from a cache (Config.label)
SPLIT_RULES = ("stratified", "course")  # how patients are split (Config.split; make_splits)


def with_label(index: pd.DataFrame, label: str) -> pd.DataFrame:
    """`index` with `target` set to what the model learns: "pneumonia" (the RSNA Target, as
    read) or "view" (1 = AP, 0 = PA; a pretext task: the demo pre-trains on it)."""
    if label not in LABELS:
        raise UsageError(f"unknown label {label!r}: choose one of {', '.join(LABELS)}")
    if label == "pneumonia":
        return index
    if not index["view"].isin(["AP", "PA"]).all():
        raise UsageError("label 'view' needs every image's view to be AP or PA")
    return index.assign(target=(index["view"] == "AP").astype(int))


def open_cache(cache: str | Path) -> tuple[pd.DataFrame, CacheStats]:
    """(index, stats) of a cache checked to be whole (`cache_check.verify_cache`): the one way
    train, evaluate, cam and tune open the cache they work on."""
    stats = verify_cache(cache)
    return read_index(cache), stats


def open_images(cache: str | Path) -> np.ndarray:
    """CACHE/images.npy memory-mapped read-only -> uint8 (N, S, S); a file too short for its
    header's shape (truncated) is a one-line `CacheDamaged` naming it."""
    try:
        return np.load(images_path(cache), mmap_mode="r")
    except ValueError as e:  # numpy: "mmap length is greater than file size"
        raise CacheDamaged(
            damaged_line(cache, f"{images_path(cache).name}: {e}", read_stats(cache))
        ) from None
