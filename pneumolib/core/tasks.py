"""What the network predicts (`Config.task`), decided here once for training, evaluation, CAMs,
prediction and tuning.

- "binary": one logit, sigmoid, binary cross-entropy; the RSNA Target (pneumonia or not).
- "three-class": three logits, softmax, cross-entropy over RSNA's detailed classes, in the
  order of `THREE_CLASSES`: Normal, No Lung Opacity / Not Normal, Lung Opacity.

Both tasks put the pneumonia score last: the sigmoid of the one logit, or P(Lung Opacity).
So `pneumonia_probability` serves every binary metric, threshold, subgroup table, comparison and
`predict` unchanged, and the two tasks can be compared on the same patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pneumolib.core.errors import PneumolibError
from pneumolib.data.labels import CLASS_KEYS, CLASSES

TASKS = ("binary", "three-class")
# Logit order of the three-class head (the pneumonia class, Lung Opacity, last) and the classes'
# short names, declared once in `pneumolib.data.labels` beside the label reader.
THREE_CLASSES = CLASSES


class TaskError(PneumolibError, ValueError):
    """A task that does not fit the data or the options; the message is one line."""


def check_task(task: str) -> str:
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def n_outputs(task: str) -> int:
    """Logits of the head: 1 for "binary", 3 for "three-class"."""
    return 1 if check_task(task) == "binary" else len(THREE_CLASSES)


def task_of(n_logits: int) -> str:
    """The task a head with `n_logits` outputs was built for (a checkpoint's head says it)."""
    if n_logits not in (1, len(THREE_CLASSES)):
        raise TaskError(f"a head with {n_logits} outputs fits no task ({', '.join(TASKS)})")
    return "binary" if n_logits == 1 else "three-class"


def class_codes(classes: Sequence[str] | pd.Series, *, where: str = "index.csv") -> np.ndarray:
    """RSNA class names -> codes 0, 1, 2 in `THREE_CLASSES` order, int64 (N,).

    A missing class ("" or NaN: the cache was built without stage_2_detailed_class_info.csv)
    is a one-line TaskError naming `where` and how many rows lack one."""
    names = pd.Series(classes, dtype=object).fillna("")
    lookup = {c: i for i, c in enumerate(THREE_CLASSES)}
    codes = names.map(lookup)
    if codes.isna().any():
        bad = names[codes.isna()]
        raise TaskError(
            f"{where}: {len(bad)} of {len(names)} patients have no RSNA class "
            f"(e.g. {bad.iloc[0]!r}); the three-class task needs "
            "stage_2_detailed_class_info.csv in the raw folder when the cache is built"
        )
    return codes.to_numpy(np.int64)


def training_targets(index: pd.DataFrame, task: str, *, where: str = "index.csv") -> np.ndarray:
    """What the loss compares the logits with, (N,): the `target` column (0/1) for "binary",
    the class codes for "three-class"."""
    if check_task(task) == "binary":
        return index["target"].to_numpy()
    return class_codes(index["class"], where=where)


def is_pneumonia(targets: np.ndarray, task: str) -> np.ndarray:
    """Training targets (N,) -> the binary pneumonia label (N,) int."""
    t = np.asarray(targets)
    return t.astype(int) if check_task(task) == "binary" else (t == len(THREE_CLASSES) - 1) * 1


def loss_weight(
    targets: np.ndarray, task: str, *, pos_weight: float = 0.0, balanced: bool = False
) -> list[float]:
    """The loss's class weights from the training targets (N,).

    binary: [positive-class weight]: `pos_weight` if set, 1 with class-balanced batches, else
    negatives / positives. three-class: one weight per class, 1 each with balanced batches,
    else N / (3 x count), so every class carries the same total weight (sklearn's "balanced").
    """
    t = np.asarray(targets)
    if check_task(task) == "binary":
        if pos_weight:
            return [float(pos_weight)]
        pos = float(t.mean()) if len(t) else 0.5
        return [1.0 if balanced else (1 - pos) / max(pos, 1e-9)]
    if pos_weight:
        raise TaskError("--pos-weight is for the binary task; three-class weighs every class")
    if balanced:
        return [1.0] * len(THREE_CLASSES)
    counts = np.bincount(t.astype(np.int64), minlength=len(THREE_CLASSES))
    return [len(t) / (len(counts) * max(int(c), 1)) for c in counts]


def sampling_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample draw weights (N,) that give every class present the same share of draws
    (class-balanced batches, for either task)."""
    t = np.asarray(targets).astype(np.int64)
    counts = np.bincount(t)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[t])


def loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """The task's loss, chosen by the head's width: logits (B, 1) with BCE (`weight` (1,) is the
    positive-class weight), or (B, K) with cross-entropy (`weight` (K,) per class); `None`
    weighs nothing."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], targets.to(logits.dtype), pos_weight=weight, reduction=reduction
        )
    return F.cross_entropy(logits, targets.long(), weight=weight, reduction=reduction)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) -> probabilities (B, K): sigmoid of the one logit, or softmax."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def pneumonia(probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Probabilities (B, K) -> the pneumonia probability (B,): the last column in both tasks."""
    return probs[:, -1]


def pneumonia_probability(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) -> P(pneumonia) (B,) as float32."""
    return pneumonia(probabilities(logits))


def class_prob_columns(task: str) -> tuple[str, ...]:
    """Per-class probability columns a predictions table has for `task` (none for binary)."""
    return () if check_task(task) == "binary" else tuple(f"prob_{k}" for k in CLASS_KEYS)
