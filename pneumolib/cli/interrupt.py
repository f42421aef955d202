"""Ctrl-C or SIGTERM in any command: one line naming the folder the command was writing, exit
code 128 + the signal's number, as shells report it (130 for Ctrl-C's SIGINT, 143 for SIGTERM:
a kill, a scheduler, a container stop, a preempted cloud machine). The one rule; `cli.main`
applies it to every command.

SIGTERM is raised as `Terminated`, a KeyboardInterrupt, so it takes every path Ctrl-C takes.
Every command already leaves its output resumable on those paths (atomic writes, progress logs,
checkpoints, a sweep's trial marked failed at once), so the line only has to say where that
output is.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from pneumolib.base.config import Config
from pneumolib.data.cache_files import partial_path

INTERRUPTED = 128 + signal.SIGINT  # 130: the exit code of Ctrl-C in every command

# What each command writes: the option holding its output folder, or None for a command that
# keeps nothing to resume from (stdout, a comparison, rewritten sources). A new command must be
# listed (tested), so that none forgets to say where its work is.
WRITES: dict[str, str | None] = {
    "demo": "out",
    "make-demo-data": "out",
    "preprocess": "cache",  # its unfinished build: CACHE.partial
    "train": "out",
    "detect": "out",
    "evaluate": "run",
    "cam": "run",
    "predict": None,
    "tune": "out",
    "compare": None,
    "card": "run",
    "publish": None,
    "results": None,  # rewrites Markdown files in place, each atomically
    "submit": None,  # writes one file (--out), whole and at the end: nothing to resume from
}


def output_folder(args: argparse.Namespace | None) -> Path | None:
    """The folder the command of `args` writes (None when it keeps nothing to resume from)."""
    option = WRITES.get(getattr(args, "command", None) or "")
    if option is None:
        return None
    value = getattr(args, option, None) or getattr(Config(), option, None)
    if value is None:
        return None
    folder = Path(value)
    if args is not None and args.command == "preprocess" and partial_path(folder).exists():
        return partial_path(folder)  # the build in progress, renamed to CACHE when whole
    return folder


def interrupted_line(args: argparse.Namespace | None) -> str:
    """The one line Ctrl-C and SIGTERM print: the folder keeping the work done, how to go on."""
    folder = output_folder(args)
    if folder is None or not folder.exists():
        return "interrupted before anything was kept; re-run the same command"
    return f"interrupted: {folder} keeps the work done so far; re-run the same command to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)  # args: the exception pickles (a worker process sends it back)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler is restored after.
    Only the main thread can set a handler: elsewhere (a command run from a thread) the block
    runs with SIGTERM as it was. Forked worker processes inherit it, as they do Ctrl-C's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the number of the signal that stopped the command: 130 for Ctrl-C, 143 for
    SIGTERM."""
    if isinstance(interrupt, Terminated):
        return 128 + interrupt.signum
    return INTERRUPTED


def close_progress_bars() -> None:
    """Close the progress bars an interrupted command left drawn (a bar that does not stay
    clears its line), so that the line after them starts on a line of its own."""
    tqdm = sys.modules.get("tqdm.std")  # not imported: no bar was drawn
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):  # a bar half torn down by the interruption
            bar.close()
