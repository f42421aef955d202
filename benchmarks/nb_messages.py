"""Kernel messages per notebook cell, read the way nbval reads them (after the cell ends).

nbval collects a cell's iopub messages only once the cell has finished; ZeroMQ drops what is
past its high-water mark (1,000), and a dropped "idle" fails the cell with "Timeout of 5 seconds
exceeded waiting for output". This prints each cell's seconds and message count, so a notebook's
worst cell can be kept well under that mark (`pneumolib.base.progress` bounds the bars' redraws).

    PNEUMOLIB_HOME=/tmp/nb python benchmarks/nb_messages.py notebooks/03_train.ipynb
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel


def count(notebook: Path) -> list[tuple[float, collections.Counter]]:
    """Run every code cell of `notebook` in a fresh kernel (cwd: its folder) -> per cell
    (seconds, Counter of iopub message types)."""
    nb = nbformat.read(notebook, as_version=4)
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(notebook.parent))
    out = []
    try:
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            t0 = time.time()
            msg_id = kc.execute(cell.source, allow_stdin=False)
            kc.get_shell_msg(timeout=3000)
            seconds, counts = time.time() - t0, collections.Counter()
            while True:
                try:
                    msg = kc.get_iopub_msg(timeout=5)
                except Exception:
                    counts["TIMEOUT"] += 1
                    break
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                counts[msg["msg_type"]] += 1
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            out.append((seconds, counts))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for i, (seconds, counts) in enumerate(count(Path(path))):
            print(f"{Path(path).name} cell {i}: {seconds:6.1f} s, {sum(counts.values())} messages")
