"""Progress bars: the one place that decides how a bar looks and how often it redraws.

Every long loop in pneumolib draws its bar through `bar`. In a notebook, `tqdm.auto` draws an
ipywidgets bar, and each redraw is a few kernel messages. A front end that reads them live
(Jupyter, Colab) does not care how many there are. nbval does: it reads a cell's messages only
after the cell ends, from a queue that drops messages past its high-water mark (1,000), and a
dropped "idle" message fails the cell with "Timeout of 5 seconds exceeded waiting for output".
So a bar redraws at most `MAX_REFRESHES` times (with a known total) and at most once per
`MIN_INTERVAL_S`, whatever the machine's speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sized
from typing import IO, cast

from tqdm.auto import tqdm

MAX_REFRESHES = 100
MIN_INTERVAL_S = 1.0


def bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
    initial: int = 0,
    file: IO[str] | None = None,
):
    """A `tqdm.auto` bar over `iterable` (or a manual one of `total` steps) with bounded redraws.

    Use `set_postfix(..., refresh=False)` / `set_description(..., refresh=False)` on it, so that
    the text changes with the next scheduled redraw instead of adding one.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(cast(Sized, iterable))  # hasattr(__len__) checked it
    miniters = max(1, math.ceil((total - initial) / MAX_REFRESHES)) if total else None
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=disable,
        initial=initial,
        file=file,
        mininterval=MIN_INTERVAL_S,
        miniters=miniters,
    )
