"""Made-up predictions for the metric tests (tests/base, tests/evaluate): tests/ is on sys.path
(conftest.py lives there), so any test module imports them as `from predictions_data import ...`."""

from __future__ import annotations

import numpy as np
import pandas as pd


def scores(n: int, seed: int, shift: float = 0.0, decimals: int | None = None):
    """Labels (n,) with ~30% positives and probabilities that separate them moderately."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 2 * y - 1.0 + shift)))
    return y, (np.round(p, decimals) if decimals is not None else p)


def table(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """A predictions table shaped like the real one, with some missing sex and age."""
    rng = np.random.default_rng(seed + 1000)
    y, p = scores(n, seed, shift)
    age = rng.integers(2, 95, n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    sex = rng.choice(np.array(["M", "F", None], dtype=object), n, p=[0.48, 0.48, 0.04])
    return pd.DataFrame(
        {
            "patientId": [f"p{i}" for i in range(n)],
            "prob": p,
            "target": y,
            "view": rng.choice(["AP", "PA"], n),
            "sex": sex,
            "age": age,
        }
    )
