"""pneumolib.evaluate_figures: plots draw on the given axes; the sample grid's choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_metrics import _scores

from pneumolib import evaluate_figures as ef


def test_plot_functions_return_figures_on_given_axes():
    from matplotlib.figure import Figure

    y, p = _scores(200, 15)
    fig = Figure()
    ax = fig.add_subplot()
    assert ef.plot_roc(y, p, {"0.5": 0.5}, ax=ax) is fig
    assert len(ax.lines) == 3  # curve, chance line, one operating point


def test_pick_samples_puts_the_most_confident_mistakes_first():
    pred = pd.DataFrame(
        {
            "prob": [0.95, 0.60, 0.05, 0.40, 0.90, 0.10, 0.80, 0.20],
            "target": [0, 0, 1, 1, 1, 0, 1, 0],
        }
    )  # FP: 0 (0.95), 1 (0.60); FN: 2 (0.05), 3 (0.40); the rest right
    idx = ef.pick_samples(pred, 0.5, n=6, seed=0)
    assert list(idx[:3]) == [0, 2, 1]  # FP 0.95, FN 0.05, FP 0.60
    assert len(idx) == 6 and len(set(idx)) == 6
    assert set(idx[3:]) <= {4, 5, 6, 7}  # then correct calls
    assert list(ef.pick_samples(pred, 0.5, n=6, seed=0)) == list(idx)
    assert len(ef.pick_samples(pred, 0.5, n=20)) == len(pred)
    fig = ef.plot_samples(np.zeros((3, 8, 8), np.uint8), pred.iloc[idx[:3]], 0.5, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and all("WRONG" in t for t in titles)
