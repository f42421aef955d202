"""The result to beat: the course's published ResNet18 and the tuned blog model (validation
accuracy and precision at threshold 0.5, course split), beside a run's own figures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_RESULTS: dict[str, dict[str, Any]] = {
    "course checkpoint": {
        "accuracy": 0.8458,
        "precision": 0.700,
        "note": "published course checkpoint, course split, validation, threshold 0.5",
    },
    "tuned blog": {
        "accuracy": 0.8405,
        "precision": 0.7025,
        "note": "tuned model from the blog post, course split, validation, threshold 0.5",
    },
}


def compare_with_reference(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """This run's accuracy and precision at threshold 0.5 beside REFERENCE_RESULTS.
    `metrics` is a `summarize` output or a `binary_metrics(y, p, 0.5)` dict."""
    at = metrics.get("thresholds", {}).get("0.5") if "thresholds" in metrics else metrics
    if not at or "accuracy" not in at or at.get("threshold", 0.5) != 0.5:
        raise ValueError(
            "compare_with_reference: metrics has no accuracy/precision at threshold 0.5"
        )
    ci = at.get("ci", {})
    split = metrics.get("split", "?")
    run = {
        "source": f"this run ({split})",
        "accuracy": at["accuracy"],
        "precision": at["precision"],
    }
    for m in ("accuracy", "precision"):
        lo, hi = ci.get(m) or (None, None)
        run[f"{m}_lo"], run[f"{m}_hi"] = lo, hi
    run["note"] = "threshold 0.5" + ("" if split == "val" else "; references are validation")
    rows = [run] + [{"source": k} | v for k, v in REFERENCE_RESULTS.items()]
    df = pd.DataFrame(rows).set_index("source").astype({"accuracy": float, "precision": float})
    for m in ("accuracy", "precision"):
        df[f"{m}_minus_run"] = df[m] - float(run[m] if run[m] is not None else np.nan)
    return df
