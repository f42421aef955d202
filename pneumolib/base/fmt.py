"""How a number and its 95% interval are written, once, for every table, card and report:
"0.912 [0.880, 0.940]", the value alone where there is no interval, "n/a" where undefined."""

from __future__ import annotations

import math
from typing import Any


def num(x: Any, *, digits: int = 3, missing: str = "n/a") -> str:
    """`digits` decimals for a float, the integer for an int, `missing` for None/NaN/inf."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    if isinstance(x, (bool, int)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def interval(pair: Any, *, digits: int = 3, missing: str = "") -> str:
    """ "[lo, hi]", or `missing` when the pair is absent or either end is undefined."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return missing
    if any(num(v) == "n/a" for v in pair):
        return missing
    return f"[{float(pair[0]):.{digits}f}, {float(pair[1]):.{digits}f}]"


def with_ci(value: Any, pair: Any = None, *, digits: int = 3, missing: str = "n/a") -> str:
    """ "0.912 [0.880, 0.940]"; the value alone without an interval; `missing` if undefined."""
    v = num(value, digits=digits, missing=missing)
    ci = interval(pair, digits=digits)
    return v if v == missing or not ci else f"{v} {ci}"
