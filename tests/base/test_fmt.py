"""pneumolib.base.fmt: the one way a value and its interval are written."""

import math

from pneumolib.base.fmt import interval, num, with_ci


def test_value_with_and_without_an_interval():
    assert with_ci(0.91234, [0.88, 0.94]) == "0.912 [0.880, 0.940]"
    assert with_ci(0.5) == "0.500"  # no interval: the value alone
    assert with_ci(0.5, [None, None]) == "0.500"
    assert with_ci(0.5, [0.1, math.nan]) == "0.500"  # an undefined end: no interval
    assert with_ci(None, [0.1, 0.2]) == "n/a" and with_ci(math.nan) == "n/a"
    assert with_ci(0.5912, (0.41, 0.7), digits=2) == "0.59 [0.41, 0.70]"


def test_numbers_and_missing_marks():
    assert num(3) == "3" and num(True) == "1" and num(0.25) == "0.250"
    assert num(math.inf) == "n/a" and num(None, missing="–") == "–"
    assert interval([0.1, 0.2]) == "[0.100, 0.200]"
    assert interval(None) == "" and interval("x", missing="–") == "–"
