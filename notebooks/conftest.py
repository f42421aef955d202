"""nbval runs the notebooks (`pytest --nbval-lax notebooks`). Under pytest-xdist
(`-n 2 --dist loadgroup`, the README's test command) they form one group: one worker runs every
cell of every notebook in order, as a reader would, since they share ./pneumolib_demo (03 trains
the runs 04-06 read)."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the kernels inherit it: one thread a worker


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every notebook cell in the group "notebooks" (one worker, collection order). Marked as
    each cell is collected, so the mark is there whichever `pytest_collection_modifyitems`
    (xdist's reads it there) runs first."""
    if item.nodeid.startswith("notebooks/"):
        item.add_marker(pytest.mark.xdist_group("notebooks"))
