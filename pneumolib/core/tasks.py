"""What the network predicts (`Config.task`), decided here once for training, evaluation, CAMs,
prediction and tuning: one `Task` per task in `_TASKS`, looked up by `task_spec(name)`.

- "binary": one logit, sigmoid, binary cross-entropy; the RSNA Target (pneumonia or not).
- "three-class": three logits, softmax, cross-entropy over RSNA's detailed classes, in the
  order of `THREE_CLASSES`: Normal, No Lung Opacity / Not Normal, Lung Opacity.

Both tasks put the pneumonia score last: the sigmoid of the one logit, or P(Lung Opacity).
So `pneumonia_probability` serves every binary metric, threshold, subgroup table, comparison and
`predict` unchanged, and the two tasks can be compared on the same patients. Adding a task is
one more row in `_TASKS` (and the functions it names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pneumolib.base.errors import PneumolibError
from pneumolib.data.labels import CLASS_KEYS, CLASSES

# Logit order of the three-class head (the pneumonia class, Lung Opacity, last) and the classes'
# short names, declared once in `pneumolib.data.labels` beside the label reader.
THREE_CLASSES = CLASSES


class TaskError(PneumolibError, ValueError):
    """A task that does not fit the data or the options; the message is one line."""


# --- what each task does differently --------------------------------------------------------


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


def _target_column(index: pd.DataFrame, where: str) -> np.ndarray:
    return index["target"].to_numpy()


def _class_column(index: pd.DataFrame, where: str) -> np.ndarray:
    return class_codes(index["class"], where=where)


def _positive_weight(t: np.ndarray, pos_weight: float, balanced: bool) -> list[float]:
    """[positive-class weight]: `pos_weight` if set, 1 with class-balanced batches, else
    negatives / positives."""
    if pos_weight:
        return [float(pos_weight)]
    pos = float(t.mean()) if len(t) else 0.5
    return [1.0 if balanced else (1 - pos) / max(pos, 1e-9)]


def _per_class_weights(t: np.ndarray, pos_weight: float, balanced: bool) -> list[float]:
    """One weight per class: 1 each with balanced batches, else N / (K x count), so every
    class carries the same total weight (sklearn's "balanced")."""
    if pos_weight:
        raise TaskError("--pos-weight is for the binary task; three-class weighs every class")
    k = len(THREE_CLASSES)
    if balanced:
        return [1.0] * k
    counts = np.bincount(t.astype(np.int64), minlength=k)
    return [len(t) / (len(counts) * max(int(c), 1)) for c in counts]


def _bce(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    """Logits (B, 1), targets (B,) 0/1, `weight` (1,) the positive-class weight."""
    return F.binary_cross_entropy_with_logits(
        logits[:, 0], targets.to(logits.dtype), pos_weight=weight, reduction=reduction
    )


def _ce(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    """Logits (B, K), targets (B,) class codes, `weight` (K,) one per class."""
    return F.cross_entropy(logits, targets.long(), weight=weight, reduction=reduction)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class Task:
    """One row of the task table: everything that differs between tasks.

    `outputs` names what each logit scores, in logit order, the pneumonia score last (so
    `pneumonia` takes the last probability column of every task)."""

    name: str
    n_outputs: int  # logits of the head
    outputs: tuple[str, ...]  # what each logit scores, in logit order; pneumonia last
    prob_columns: tuple[str, ...]  # per-class probability columns of a predictions table
    needs_classes: bool  # learns RSNA's detailed classes: the cache must hold them
    pneumonia_target: int  # the training target that means pneumonia
    read_targets: Callable[[pd.DataFrame, str], np.ndarray]  # (index, where) -> targets (N,)
    weights: Callable[[np.ndarray, float, bool], list[float]]  # (targets, pos_weight, balanced)
    loss_fn: Callable[..., torch.Tensor]  # (logits, targets, weight, reduction) -> loss
    activation: Callable[[torch.Tensor], torch.Tensor]  # logits (B, K) -> probabilities (B, K)

    def targets(self, index: pd.DataFrame, *, where: str = "index.csv") -> np.ndarray:
        """What the loss compares the logits with, (N,): the `target` column (0/1) for
        "binary", the class codes for "three-class" (a TaskError naming `where` if missing)."""
        return self.read_targets(index, where)

    def is_pneumonia(self, targets: np.ndarray) -> np.ndarray:
        """Training targets (N,) -> the binary pneumonia label (N,) int."""
        return (np.asarray(targets) == self.pneumonia_target).astype(int)

    def class_weights(
        self, targets: np.ndarray, *, pos_weight: float = 0.0, balanced: bool = False
    ) -> list[float]:
        """The loss's weights from the training targets (N,): (1,) positive-class weight for
        "binary", (K,) per class for "three-class" (1 each with class-balanced batches)."""
        return self.weights(np.asarray(targets), pos_weight, balanced)


_TASKS: dict[str, Task] = {
    "binary": Task(
        name="binary",
        n_outputs=1,
        outputs=("pneumonia",),
        prob_columns=(),  # the one probability is the `prob` column every task has
        needs_classes=False,
        pneumonia_target=1,
        read_targets=_target_column,
        weights=_positive_weight,
        loss_fn=_bce,
        activation=torch.sigmoid,
    ),
    "three-class": Task(
        name="three-class",
        n_outputs=len(THREE_CLASSES),
        outputs=THREE_CLASSES,
        prob_columns=tuple(f"prob_{k}" for k in CLASS_KEYS),
        needs_classes=True,
        pneumonia_target=len(THREE_CLASSES) - 1,
        read_targets=_class_column,
        weights=_per_class_weights,
        loss_fn=_ce,
        activation=_softmax,
    ),
}
TASKS = tuple(_TASKS)


# --- lookups ------------------------------------------------------------------------------------


def task_spec(name: str) -> Task:
    """The `Task` called `name`; an unknown name is a one-line TaskError listing the tasks."""
    try:
        return _TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None


def task_of(n_logits: int) -> Task:
    """The task a head with `n_logits` outputs was built for (a checkpoint's head says it)."""
    for t in _TASKS.values():
        if t.n_outputs == n_logits:
            return t
    raise TaskError(f"a head with {n_logits} outputs fits no task ({', '.join(TASKS)})")


def task_of_columns(columns: Iterable[str]) -> Task:
    """The task whose predictions table has `columns`: the one with the most per-class
    probability columns all present (binary when none are)."""
    cols = set(columns)
    fits = [t for t in _TASKS.values() if set(t.prob_columns) <= cols]
    return max(fits, key=lambda t: len(t.prob_columns))


def check_task(task: str) -> str:
    """`task` if it names a task, else a one-line TaskError."""
    return task_spec(task).name


def n_outputs(task: str) -> int:
    """Logits of the head: 1 for "binary", 3 for "three-class" (`task_spec(task).n_outputs`)."""
    return task_spec(task).n_outputs


# --- the same for every task ---------------------------------------------------------------------


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
    """The loss of the task the head's width says: logits (B, 1) with BCE (`weight` (1,) is
    the positive-class weight), or (B, K) with cross-entropy (`weight` (K,) per class); `None`
    weighs nothing."""
    return task_of(logits.shape[1]).loss_fn(logits, targets, weight, reduction)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) -> probabilities (B, K): sigmoid of the one logit, or softmax."""
    logits = logits.float()
    return task_of(logits.shape[1]).activation(logits)


def pneumonia(probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Probabilities (B, K) -> the pneumonia probability (B,): the last column in every task."""
    return probs[:, -1]


def pneumonia_probability(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) -> P(pneumonia) (B,) as float32."""
    return probabilities(logits)[:, -1]
