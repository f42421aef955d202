"""`python -m pneumolib <command>`: the command line over the package (see README).

Each command validates its inputs, prints progress, and exits non-zero with a one-line reason
on bad input (no traceback for the user's mistakes; PNEUMOLIB_DEBUG=1 shows it anyway).
"""

from __future__ import annotations

import os
import sys

from pneumolib.cli.commands import config_from_args
from pneumolib.cli.interrupt import (
    close_progress_bars,
    exit_status,
    interrupted_line,
    sigterm_as_interrupt,
)
from pneumolib.cli.parser import USER_ERRORS, build_parser

__all__ = ["build_parser", "config_from_args", "main", "run"]


def run(argv: list[str] | None = None) -> int:
    """Parse `argv` and run its command's handler; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


def main(argv: list[str] | None = None) -> int:
    """`run`, with the error contract: the user's errors as one `error: ...` line (exit 2; the
    machine's OS errors exit 1), Ctrl-C or SIGTERM as one line naming the folder kept (exit
    130 or 143, every command: `cli.interrupt`), bugs with their traceback."""
    debug = bool(os.environ.get("PNEUMOLIB_DEBUG"))  # the full traceback, for bug reports
    try:
        with sigterm_as_interrupt():
            return run(argv)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM raised as `Terminated`
        # argv parsed already (the signal came in the handler): parse it again for the folder
        args, _ = build_parser().parse_known_args(argv)
        close_progress_bars()
        print(interrupted_line(args), file=sys.stderr)
        return exit_status(stop)
    except USER_ERRORS as e:
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's trouble (full disk, permissions, I/O): one line too
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
