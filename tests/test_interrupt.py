"""Same interruption, same answer: Ctrl-C in every command prints one line naming the folder
that keeps the work done, and exits 130 (`cli.interrupt`, applied by `cli.main`). The real
interruptions of preprocess and train through the CLI are in test_faults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pneumolib.cli import interrupt, main, parser


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
        "evaluate": (["evaluate", "--run", str(run)], run),
        "cam": (["cam", "--run", str(run)], run),
        "predict": (["predict", "--checkpoint", str(run / "best.pt"), str(tmp / "a.png")], None),
        "tune": (["tune", "--cache", str(cache), "--out", str(out)], out),
        "compare": (["compare", "--run", str(run), "--run", str(out)], None),
        "card": (["card", "--run", str(run)], run),
        "publish": (["publish", "--check"], None),
        "results": (["results", "--check"], None),
    }
    return lines[command]


def commands() -> list[str]:
    sub = next(
        a for a in parser.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return sorted(sub.choices)


def test_every_command_declares_what_it_writes() -> None:
    assert sorted(interrupt.WRITES) == commands()  # a new command must say where its work is


@pytest.mark.parametrize("command", commands())
def test_ctrl_c_in_every_command_is_one_line_naming_the_folder_and_exit_130(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    argv, folder = argv_and_folder(command, tmp_path)
    handlers: list[str] = []

    def interrupted(args: argparse.Namespace) -> None:
        handlers.append(args.command)
        if folder is not None:
            folder.mkdir(parents=True)  # some work done
        raise KeyboardInterrupt

    real = parser.build_parser

    def patched() -> argparse.ArgumentParser:
        ap = real()
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[command].set_defaults(func=interrupted)
        return ap

    monkeypatch.setattr("pneumolib.cli.build_parser", patched)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert handlers == [command]
    assert err.splitlines() == [ctrl_c_line(folder) if folder else NOTHING]


def test_preprocess_names_its_unfinished_build_and_nothing_before_any_work(tmp_path) -> None:
    args = parser.build_parser().parse_args(
        ["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "cache")]
    )
    assert interrupt.interrupted_line(args) == NOTHING  # stopped before anything was written
    (tmp_path / "cache.partial").mkdir()
    assert interrupt.interrupted_line(args) == ctrl_c_line(tmp_path / "cache.partial")
    assert interrupt.interrupted_line(None) == NOTHING  # Ctrl-C while the options were read
