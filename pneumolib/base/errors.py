"""What the user can fix, apart from what is a bug: every error the package raises on purpose
for bad input or a bad situation derives from `PneumolibError`.

The command line prints such an error as one line (`error: ...`, exit code 2); any other
exception is a bug and shows its traceback. Each subclass keeps the built-in base it had before
(`ValueError`, `RuntimeError`), so existing `except ValueError:` clauses still catch it.
Nothing here imports anything: `pneumolib.data` uses it without torch.
"""

from __future__ import annotations


class PneumolibError(Exception):
    """The user's input or situation, not a bug; the message (one line) says why and what to do."""


class UsageError(PneumolibError, ValueError):
    """A value the user gave (an option, a file's content, a run folder) that cannot work."""


class RunError(PneumolibError, RuntimeError):
    """A run (or a write) that cannot go on as asked: a damaged or foreign run folder, other
    settings on resume, a full disk. The message (one line) says why and what to do."""
