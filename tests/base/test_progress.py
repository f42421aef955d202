"""Progress bars redraw a bounded number of times, whatever the loop's length or speed."""

from __future__ import annotations

import io

from pneumolib.base import progress


def _redraws(text: str) -> int:
    return text.count("\r")


def test_bar_redraws_at_most_max_refreshes_times(monkeypatch):
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0.0)  # a slow machine: time never limits
    out = io.StringIO()
    for _ in progress.bar(range(20_000), desc="x", file=out):
        pass
    assert 10 <= _redraws(out.getvalue()) <= progress.MAX_REFRESHES + 3


def test_manual_bar_with_initial_counts_only_the_remaining_steps(monkeypatch):
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0.0)
    out = io.StringIO()
    b = progress.bar(total=50_000, initial=40_000, file=out)
    for _ in range(10_000):
        b.update()
        b.set_postfix(loss="0.1", refresh=False)  # text changes ride on the next redraw
    b.close()
    assert 10 <= _redraws(out.getvalue()) <= progress.MAX_REFRESHES + 3


def test_unbounded_tqdm_would_redraw_every_step(monkeypatch):
    """The control: without the bound, the same loop redraws thousands of times."""
    from tqdm import tqdm

    out = io.StringIO()
    for _ in tqdm(range(20_000), file=out, mininterval=0.0, miniters=1):
        pass
    assert _redraws(out.getvalue()) > 10 * progress.MAX_REFRESHES
