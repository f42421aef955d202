"""Same interruption, same answer: Ctrl-C or SIGTERM in every command prints one line naming
the folder that keeps the work done, and exits 128 + the signal's number: 130 or 143
(`cli.interrupt`, applied by `cli.main`). The Ctrl-C interruptions of preprocess and train
through the CLI are in test_faults; a real SIGTERM to `train` is here, and to sweep workers
in tests/tune/test_tune_postgres.py."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_config import TINY

from pneumolib.cli import interrupt, main, parser

ROOT = Path(__file__).resolve().parents[1]


def ctrl_c_line(folder: Path) -> str:
    return f"interrupted: {folder} keeps the work done so far; re-run the same command to resume"


NOTHING = "interrupted before anything was kept; re-run the same command"


def argv_and_folder(command: str, tmp: Path) -> tuple[list[str], Path | None]:
    """A valid command line of `command` and the folder Ctrl-C should name (None: none)."""
    out, cache, run = tmp / "out", tmp / "cache", tmp / "run"
    lines: dict[str, tuple[list[str], Path | None]] = {
        "demo": (["demo", "--out", str(out)], out),
        "make-demo-data": (["make-demo-data", str(out)], out),
        "preprocess": (["preprocess", "--raw", str(tmp / "raw"), "--out", str(cache)], cache),
        "train": (["train", "--cache", str(cache), "--out", str(out)], out),
        "detect": (["detect", "--cache", str(cache), "--out", str(out)], out),
        "evaluate": (["evaluate", "--run", str(run)], run),
        "cam": (["cam", "--run", str(run)], run),
        "predict": (["predict", "--checkpoint", str(run / "best.pt"), str(tmp / "a.png")], None),
        "tune": (["tune", "--cache", str(cache), "--out", str(out)], out),
        "compare": (["compare", "--run", str(run), "--run", str(out)], None),
        "card": (["card", "--run", str(run)], run),
        "publish": (["publish", "--check"], None),
        "results": (["results", "--check"], None),
        "submit": (["submit", "--run", str(run), "--images", str(tmp), "--out", str(out)], None),
    }
    return lines[command]


def commands() -> list[str]:
    sub = next(
        a for a in parser.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return sorted(sub.choices)


def test_every_command_declares_what_it_writes() -> None:
    assert sorted(interrupt.WRITES) == commands()  # a new command must say where its work is


def ctrl_c() -> None:
    raise KeyboardInterrupt


def sigterm() -> None:
    """What SIGTERM does in a command: the handler `cli.main` installed runs (called here as
    the interpreter calls it, not sent: a stray SIGTERM would end the test process)."""
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler), "cli.main installed no SIGTERM handler"
    handler(signal.SIGTERM, None)


@pytest.mark.parametrize("stop, status", [(ctrl_c, 130), (sigterm, 143)], ids=["ctrl-c", "term"])
@pytest.mark.parametrize("command", commands())
def test_ctrl_c_or_sigterm_in_every_command_is_one_line_naming_the_folder(
    command: str, stop, status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    argv, folder = argv_and_folder(command, tmp_path)
    handlers: list[str] = []
    before = signal.getsignal(signal.SIGTERM)

    def interrupted(args: argparse.Namespace) -> None:
        handlers.append(args.command)
        if folder is not None:
            folder.mkdir(parents=True)  # some work done
        stop()

    real = parser.build_parser

    def patched() -> argparse.ArgumentParser:
        ap = real()
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[command].set_defaults(func=interrupted)
        return ap

    monkeypatch.setattr("pneumolib.cli.build_parser", patched)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert handlers == [command]
    assert err.splitlines() == [ctrl_c_line(folder) if folder else NOTHING]
    assert signal.getsignal(signal.SIGTERM) is before  # main restores the handler it replaced


def test_preprocess_names_its_unfinished_build_and_nothing_before_any_work(tmp_path) -> None:
    args = parser.build_parser().parse_args(
        ["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "cache")]
    )
    assert interrupt.interrupted_line(args) == NOTHING  # stopped before anything was written
    (tmp_path / "cache.partial").mkdir()
    assert interrupt.interrupted_line(args) == ctrl_c_line(tmp_path / "cache.partial")
    assert interrupt.interrupted_line(None) == NOTHING  # Ctrl-C while the options were read


def test_a_progress_bar_left_drawn_is_cleared_before_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from tqdm import tqdm

    argv, folder = argv_and_folder("train", tmp_path)

    def interrupted(args: argparse.Namespace) -> None:
        assert folder is not None
        folder.mkdir(parents=True)
        bar = tqdm(total=3, desc="epoch 1/3", leave=False, file=sys.stderr)
        bar.update(1)  # drawn, not closed: the signal came mid-epoch
        sigterm()

    real = parser.build_parser

    def patched() -> argparse.ArgumentParser:
        ap = real()
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices["train"].set_defaults(func=interrupted)
        return ap

    monkeypatch.setattr("pneumolib.cli.build_parser", patched)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "epoch 1/3" in err and err.endswith(ctrl_c_line(folder) + "\n")
    assert err[err.index("interrupted:") - 1] in "\r\n"  # on a line of its own, not after the bar


def test_terminated_is_a_keyboard_interrupt_that_survives_a_worker_process() -> None:
    import pickle

    stop = pickle.loads(pickle.dumps(interrupt.Terminated(signal.SIGTERM)))
    assert isinstance(stop, KeyboardInterrupt) and interrupt.exit_status(stop) == 143
    assert interrupt.exit_status(KeyboardInterrupt()) == 130


# After epoch 1's checkpoint, `train` waits inside a step: the moment to send the signal.
TRAIN_UNTIL_SIGNALLED = """
import sys, time
from pathlib import Path
from pneumolib.cli import main
from pneumolib.train import loop

real, ready = loop.fit, Path(sys.argv[1])

def wait_for_the_signal(event, state):
    if event == "step" and state["epoch"] == 1:  # epoch 1 is kept: last.pt, metrics.csv
        ready.write_text("waiting")
        time.sleep(120)

loop.fit = lambda cfg: real(cfg, callback=wait_for_the_signal, progress=False)
sys.exit(main(sys.argv[2:]))
"""
TINY_TRAIN = {**TINY, "epochs": 3}


@pytest.mark.slow
def test_sigterm_to_train_prints_the_line_exits_143_and_the_run_resumes(
    demo_cache: Path, tmp_path: Path
) -> None:
    out, ready = tmp_path / "run", tmp_path / "ready"
    argv = ["train", "--cache", str(demo_cache), "--out", str(out)]
    argv += [a for k, v in TINY_TRAIN.items() for a in ("--" + k.replace("_", "-"), str(v))]
    script = tmp_path / "train_until_signalled.py"
    script.write_text(textwrap.dedent(TRAIN_UNTIL_SIGNALLED))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ready), *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout[-1000:] + stderr[-2000:]
    assert stderr.splitlines() == [ctrl_c_line(out)]  # no traceback, no other line
    assert pd.read_csv(out / "metrics.csv").epoch.tolist() == [1]

    again = subprocess.run(  # the same command, as the line says
        [sys.executable, "-m", "pneumolib", *argv],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert pd.read_csv(out / "metrics.csv").epoch.tolist() == [1, 2, 3]  # resumed after 1
