"""Which worker may write a run folder: the owner marker RUN/owner.json of a sweep's trials.

A sweep takes a trial over from a worker that hung (`tune.claims.reap_stale`) and resumes its
folder elsewhere; the hung worker may wake later and go on writing checkpoints into that same
folder. So each worker writes its own token into RUN/owner.json when it starts or takes over a
trial (`claim_run`), and the trainer checks the marker is still its own just before each
epoch's writes (`check_owner`): the old worker then stops with one `TakenOver` line and writes
nothing more. The check and the write are not one atomic step, but a take-over comes only
after seconds to minutes of silence (`grace`, `progress_timeout`), far longer than the instant
between the two. Torch-free.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path

from pneumolib.base.errors import RunError
from pneumolib.base.files import atomic_write
from pneumolib.base.rundir import owner_path


class TakenOver(RunError):
    """Another worker holds the run folder now; this one must stop without writing."""


def claim_run(run: str | Path, *, trial: int | None = None) -> str:
    """Make this worker the owner of RUN (created if absent); returns its token, unique to
    this claim: "trial N on HOST pid P (random)"."""
    who = f"trial {trial}" if trial is not None else "a worker"
    token = f"{who} on {socket.gethostname()} pid {os.getpid()} ({secrets.token_hex(4)})"
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    Path(run).mkdir(parents=True, exist_ok=True)
    atomic_write(owner_path(run), json.dumps({"owner": token, "since": since}, indent=2))
    return token


def run_owner(run: str | Path) -> str | None:
    """The token in RUN/owner.json, or None where there is none (or it cannot be read)."""
    try:
        return str(json.loads(owner_path(run).read_text())["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_owner(run: str | Path, token: str) -> None:
    """Return when RUN/owner.json still holds `token`; else `TakenOver`, one line."""
    now = run_owner(run)
    if now != token:
        by = now if now is not None else "nobody (its owner.json is gone)"
        raise TakenOver(f"{run}: {token} was taken over by {by}; this worker stops")
