"""The multi-worker sweep on a real PostgreSQL server: two `tune` workers on one study, one
killed (SIGKILL) and one stopped (SIGTERM) mid-trial, the server restarted between, and a third
worker that finishes what is left; every grid point ends exactly once. Also the spelling of
`postgresql://` URLs for whichever driver is installed (no server needed).

The server is the system's PostgreSQL (Debian's, which `.ci/run` installs), in a throwaway
folder on a free port of 127.0.0.1. initdb and pg_ctl refuse to run as root, so under root they
run as the user `postgres`. A server that cannot start skips the test, saying why; under CI
(CI=true) it fails it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from tiny_config import TINY as ONE_EPOCH

from pneumolib import tune
from pneumolib.base.errors import UsageError
from pneumolib.tune import storage

ROOT = Path(__file__).resolve().parents[2]
GRID = {f"bs{b}_lr{lr}" for b in (4, 8) for lr in ("0.001", "0.002")}
TINY = {**ONE_EPOCH, "epochs": 3}


# --- postgresql:// as users write it (no server) -----------------------------------------------


def installed(*modules: str):
    """A stand-in for importlib.util.find_spec that finds only `modules`."""
    return lambda name, *a: object() if name in modules else None


def test_postgresql_urls_get_the_installed_drivers_dialect(monkeypatch) -> None:
    find = "pneumolib.tune.storage.importlib.util.find_spec"
    monkeypatch.setattr(find, installed("psycopg", "psycopg2"))
    assert storage.database_url("postgresql://u:pw@db.example:5432/sweeps") == (
        "postgresql+psycopg://u:pw@db.example:5432/sweeps"
    )
    assert storage.database_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    for kept in ("postgresql+psycopg2://u@h/d", "sqlite:///x.db", "mysql://u@h/d"):
        assert storage.database_url(kept) == kept  # a driver chosen, or another database
    monkeypatch.setattr("pneumolib.tune.storage.sqlalchemy.__version__", "1.4.23")
    assert storage.database_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    monkeypatch.setattr(find, installed("psycopg"))
    with pytest.raises(UsageError, match="psycopg 3 needs SQLAlchemy 2"):
        storage.database_url("postgresql://u@h/d")
    monkeypatch.undo()
    monkeypatch.setattr(find, installed("psycopg2"))  # Colab's: psycopg2 only
    assert storage.database_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    monkeypatch.setattr(find, installed())
    with pytest.raises(UsageError) as err:
        tune.open_storage("postgresql://me:secret@h:5432/d", "unused")
    (line,) = str(err.value).splitlines()
    assert line == (
        "--storage postgresql://me:***@h:5432/d: no PostgreSQL driver is installed; "
        'pip install "pneumolib[postgres]" adds one'
    )


def test_the_test_extra_and_notebook_06_install_the_postgres_driver() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib: Python >= 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras["postgres"]) <= set(extras["test"])  # the README's test command has it
    colab = (ROOT / "notebooks" / "06_tuning.py").read_text()  # what notebook 06 installs
    assert all(f'"{req}"' in colab for req in extras["postgres"])


# --- the server ----------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip, saying why; under CI (CI=true) fail: CI installs PostgreSQL and the driver."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL server for the sweep test: {reason}")
    pytest.skip(f"PostgreSQL server for the sweep test: {reason}")


def pg_program(name: str) -> str | None:
    """`name` (initdb, pg_ctl) on PATH, or in Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = Path("/usr/lib/postgresql").glob(f"*/bin/{name}")
    newest = sorted(versions, key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(newest[-1]) if newest else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A PostgreSQL server in `folder` on 127.0.0.1:`port`, run as `user` (None: this user)."""

    folder: Path
    port: int
    pg_ctl: str
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"  # as a user writes it

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *cmd], cwd=self.folder, capture_output=True, text=True, timeout=120
        )

    def ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.folder / "data"), str(self.folder / "server.log")
        return self.run(self.pg_ctl, action, "-D", data, "-l", log, "-w", "-o", options, *extra)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    """A fresh PostgreSQL server for this module, stopped and removed after it."""
    initdb, pg_ctl = pg_program("initdb"), pg_program("pg_ctl")
    if not (initdb and pg_ctl):
        unavailable("initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None:
        unavailable('no PostgreSQL driver (pip install -e ".[test]" installs psycopg)')
    user = None
    if os.geteuid() == 0:  # initdb and pg_ctl refuse root
        user = "postgres"
        if shutil.which("runuser") is None:
            unavailable("running as root without runuser to start the server as another user")
    folder = Path(tempfile.mkdtemp(prefix="pneumolib-postgres-"))
    try:
        if user:
            shutil.chown(folder, user=user)
    except (LookupError, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"cannot hand {folder} to user {user!r} ({e})")
    server = Server(folder=folder, port=free_port(), pg_ctl=pg_ctl, user=user)  # type: ignore[arg-type]
    init = server.run(initdb, "-D", str(folder / "data"), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
    start = server.ctl("start") if init.returncode == 0 else init
    if start.returncode != 0:
        log = folder / "server.log"
        tail = (start.stderr + (log.read_text() if log.exists() else "")).strip()[-500:]
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"it did not start: {tail}")
    try:
        yield server
    finally:
        server.ctl("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


# --- the sweep -----------------------------------------------------------------------------

# A `tune` worker through the real command line (cli.main), which after each epoch's files
# writes STATE/<pid> = "RUN EPOCH" and waits: after epoch 1 until STATE/go exists, after
# epoch 2 until it is killed. So the test acts at known points in the middle of trials.
WORKER = """
import os, sys, time
from pathlib import Path
from pneumolib.cli import main
from pneumolib.train import loop

real, state_dir = loop.fit, Path(sys.argv[1])

def fit(cfg, callback=None, progress=True, **kw):
    def paused(event, state):
        if callback:
            callback(event, state)  # the sweep's own: heartbeat count, trial.report
        if event == "epoch":
            done = state["epoch"] + 1
            (state_dir / str(os.getpid())).write_text(f"{Path(cfg.out).name} {done}")
            while (done == 1 and not (state_dir / "go").exists()) or done == 2:
                time.sleep(0.05)
    return real(cfg, paused, progress, **kw)

loop.fit = fit
sys.exit(main(sys.argv[2:]))
"""


def wait_for(what: str, check, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not check():
        for p in procs:
            assert p.poll() is None, f"a worker ended while waiting for {what}: {p.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_workers_killed_and_a_server_restart_leave_each_point_done_once(
    postgres: Server, demo_cache: Path, tmp_path: Path
) -> None:
    out, state_dir = tmp_path / "sweep", tmp_path / "state"
    state_dir.mkdir()
    argv = ["tune", "--cache", str(demo_cache), "--out", str(out), "--storage", postgres.url]
    argv += ["--batch-sizes", "4,8", "--lrs", "1e-3,2e-3", "--max-micro-batch", "8"]
    argv += ["--heartbeat", "0.5", "--grace", "3"]
    argv += [a for k, v in TINY.items() for a in ("--" + k.replace("_", "-"), str(v))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(state_dir), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]

    def at_epoch(n: int) -> dict[str, str]:
        """Each worker's run, once every worker has kept epoch `n` of its trial."""
        seen = {p.pid: state_dir / str(p.pid) for p in workers}
        states = {pid: f.read_text().split() for pid, f in seen.items() if f.exists()}
        return (
            {}
            if len(states) < 2 or any(int(s[1]) != n for s in states.values())
            else {str(pid): s[0] for pid, s in states.items()}
        )

    wait_for("both workers at epoch 1", lambda: at_epoch(1), workers)
    restarted = postgres.ctl("restart", "-m", "fast")  # both workers mid-trial
    assert restarted.returncode == 0, restarted.stderr
    (state_dir / "go").touch()  # epoch 2 trains and is reported to the restarted server
    wait_for("both workers at epoch 2", lambda: at_epoch(2), workers)
    runs = at_epoch(2)
    killed, stopped = workers
    killed.send_signal(signal.SIGKILL)
    stopped.send_signal(signal.SIGTERM)
    killed.communicate(timeout=60)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    line = f"interrupted: {out} keeps the work done so far; re-run the same command to resume"
    assert err.strip().splitlines()[-1] == line and err.count("interrupted:") == 1
    study = optuna.load_study(study_name="grid", storage=storage.database_url(postgres.url))
    first = {
        t.user_attrs["run"]: t
        for t in study.get_trials()
        if "run" in t.user_attrs and not t.user_attrs.get("duplicate")
    }
    killed_run, stopped_run = runs[str(killed.pid)], runs[str(stopped.pid)]
    assert first[killed_run].state == TrialState.RUNNING  # taken over once its heartbeat stops
    assert first[stopped_run].state == TrialState.FAIL  # given back at once
    for run in (killed_run, stopped_run):  # epoch 2 was reported after the restart
        assert sorted(first[run].intermediate_values) == [1, 2], run

    last = subprocess.run(  # the third worker: the plain command, finishing what is left
        [sys.executable, "-m", "pneumolib", *argv],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert last.returncode == 0, last.stdout[-2000:] + last.stderr[-2000:]
    by_run: dict[str, list] = {}
    for t in optuna.load_study(
        study_name="grid", storage=storage.database_url(postgres.url)
    ).trials:
        if not t.user_attrs.get("duplicate"):
            by_run.setdefault(t.user_attrs["run"], []).append(t.state)
    assert set(by_run) == GRID
    for run, states in by_run.items():  # exactly one COMPLETE per point
        want = [TrialState.FAIL, TrialState.COMPLETE] if run in runs.values() else None
        assert states.count(TrialState.COMPLETE) == 1 and (want is None or states == want), run
        assert pd.read_csv(out / "grid" / run / "metrics.csv").epoch.tolist() == [1, 2, 3], run
    log = tune.sweep_log(out / "grid")
    assert log.detail[(log.event == "interrupted") & (log.run == stopped_run)].tolist() == [
        "SIGTERM"
    ]
    assert log.run[log.event == "stale"].tolist() == [killed_run]
    resumed = log[log.event == "resume"]
    assert sorted(resumed.run) == sorted(runs.values())  # from last.pt, not from scratch
    assert all(d.startswith("epoch 2/3") for d in resumed.detail)
    table = pd.read_csv(out / "grid" / "results.csv")
    assert sorted(table.run) == sorted(GRID)  # one row each
