"""Where a sweep's record lives: the Optuna storage (SQLite, any SQLAlchemy database, or a
journal file), the study on it, and the human-readable event log SWEEP/<study>/sweep.log."""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from pneumolib.base.errors import UsageError
from pneumolib.tune.plan import Plan, plan_diff


def retry(fn: Callable[..., Any], *args: Any, tries: int = 8, **kwargs: Any) -> Any:
    """Call `fn`, retrying on the transient errors of a busy shared database (SQLite locks)."""
    for i in range(tries):
        try:
            return fn(*args, **kwargs)
        # IntegrityError: two workers creating the tables of a new SQLite file at once.
        except (optuna.exceptions.StorageInternalError, OperationalError, IntegrityError):
            if i == tries - 1:
                raise
            time.sleep(random.uniform(0.1, 0.5) * (i + 1))
    raise AssertionError("unreachable")


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The storage as a URL or a journal path; None -> sqlite:///SWEEP/study.db (absolute)."""
    if storage is None:
        return f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    if path.suffix in (".log", ".journal"):
        return str(path)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}"
    raise UsageError(
        f"--storage {storage!r}: expected a database URL (sqlite:///FILE.db, "
        "postgresql://...) or a journal file ending in .log or .journal"
    )


# PostgreSQL drivers in the order tried: (module, SQLAlchemy dialect, lowest SQLAlchemy with it).
# `pip install "pneumolib[postgres]"` installs the first (psycopg 3); psycopg2, which Colab
# and many servers already have, serves as well.
POSTGRES_DRIVERS = (("psycopg", "postgresql+psycopg", 2), ("psycopg2", "postgresql+psycopg2", 1))


def database_url(url: str) -> str:
    """`url` with `postgresql://` (or `postgres://`) spelled as the SQLAlchemy dialect of the
    PostgreSQL driver installed here, so that the URL works as users write it whichever driver
    is installed. A URL naming its driver (`postgresql+NAME://`) or another database is kept."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    sqlalchemy_major = int(sqlalchemy.__version__.split(".")[0])
    for module, dialect, since in POSTGRES_DRIVERS:
        if sqlalchemy_major >= since and importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    missing = 'no PostgreSQL driver is installed; pip install "pneumolib[postgres]" adds one'
    if importlib.util.find_spec("psycopg") is not None:  # SQLAlchemy 1.4 has no dialect for it
        missing = (
            f"psycopg 3 needs SQLAlchemy 2 (installed: {sqlalchemy.__version__}); "
            "upgrade SQLAlchemy, or pip install psycopg2-binary"
        )
    raise UsageError(f"--storage {masked_url(url)}: {missing}")


def open_storage(storage: str | None, sweep_dir: str | Path) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL, a journal file path (.log/.journal), or None (SQLite in
    SWEEP). SQLite waits up to two minutes for a lock instead of failing at once."""
    url = storage_url(storage, sweep_dir)
    if "://" not in url:  # a journal file: appends under a file lock, no database needed
        # optuna >= 4 only: an older optuna still runs SQLite and database sweeps
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(url, lock_obj=JournalFileOpenLock(url))
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        kwargs = {"pool_pre_ping": True}
    engine_url = database_url(url)  # a missing PostgreSQL driver: one line naming the extra
    try:
        return retry(optuna.storages.RDBStorage, engine_url, engine_kwargs=kwargs)
    except Exception as e:  # a wrong URL, an unreachable server, a missing database driver
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--storage {masked_url(url)}: cannot open it ({reason})") from e


def masked_url(url: str) -> str:
    """The storage URL with any password hidden, for printing."""
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only the scheme
        return url.split("://")[0] + "://..."


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    plan: Plan,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or join study `name`; a study made with another plan (points or fixed settings)
    is refused, so one study never mixes two experiments."""
    study = retry(
        optuna.create_study,
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler or optuna.samplers.RandomSampler(),
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    old, new = study.user_attrs.get("plan"), plan.to_dict()
    if old is None:
        retry(study.set_user_attr, "plan", new)
    elif old != new:
        raise UsageError(
            f"study {name!r} was made with other settings {plan_diff(old, new)}; "
            "use another --study (or --out), or the same settings"
        )
    return study


def load_sweep(
    sweep_dir: str | Path, study: str = "grid", storage: str | None = None
) -> optuna.Study:
    """The Optuna study of a finished or running sweep (for `results_table` and the plots)."""
    return optuna.load_study(study_name=study, storage=open_storage(storage, sweep_dir))


# --- the event log ----------------------------------------------------------------------------


def log_event(study_dir: Path, event: str, *, run: str, trial: int | str, detail: str = "") -> None:
    """One line in SWEEP/<study>/sweep.log (a single small append: whole lines across workers)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    line = "\t".join([time.strftime("%Y-%m-%dT%H:%M:%S"), worker, event, run, str(trial), detail])
    with open(study_dir / "sweep.log", "a") as f:
        f.write(line + "\n")


def sweep_log(study_dir: str | Path) -> pd.DataFrame:
    """SWEEP/<study>/sweep.log as a table: time, worker, event, run, trial, detail."""
    cols = ["time", "worker", "event", "run", "trial", "detail"]
    path = Path(study_dir) / "sweep.log"
    if not path.exists():
        return pd.DataFrame(columns=cols)
    rows = [ln.split("\t") for ln in path.read_text().splitlines() if ln]
    return pd.DataFrame([r + [""] * (len(cols) - len(r)) for r in rows], columns=cols)
