"""Ctrl-C in any command: one line naming the folder the command was writing, exit code 130
(128 + SIGINT, as shells report it). The one rule; `cli.main` applies it to every command.

Every command already leaves its output resumable (atomic writes, progress logs, checkpoints,
a sweep's trial marked failed at once), so the line only has to say where that output is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumolib.base.config import Config
from pneumolib.data.cache_files import partial_path

INTERRUPTED = 130  # the exit code of Ctrl-C in every command

# What each command writes: the option holding its output folder, or None for a command that
# keeps nothing to resume from (stdout, a comparison, rewritten sources). A new command must be
# listed (tested), so that none forgets to say where its work is.
WRITES: dict[str, str | None] = {
    "demo": "out",
    "make-demo-data": "out",
    "preprocess": "cache",  # its unfinished build: CACHE.partial
    "train": "out",
    "evaluate": "run",
    "cam": "run",
    "predict": None,
    "tune": "out",
    "compare": None,
    "card": "run",
    "publish": None,
    "results": None,  # rewrites Markdown files in place, each atomically
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
    """The one line Ctrl-C prints: the folder that keeps the work done and how to go on."""
    folder = output_folder(args)
    if folder is None or not folder.exists():
        return "interrupted before anything was kept; re-run the same command"
    return f"interrupted: {folder} keeps the work done so far; re-run the same command to resume"
