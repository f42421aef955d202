"""The command line explains itself: option help from the Config descriptions, choices that refuse
a typo in one line, one handler per command, and the error contract (the user's errors in one
line, bugs with their traceback)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pneumolib import cli
from pneumolib.base.config import Config, default_workers, field_choices, field_help
from pneumolib.base.errors import PneumolibError


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _action(command: str, dest: str) -> argparse.Action:
    return next(a for a in _subparser(command)._actions if a.dest == dest)


def test_every_config_field_has_a_one_line_description():
    for f in dataclasses.fields(Config):
        text = f.metadata.get("help", "")
        assert text.strip() and "\n" not in text, f.name


def test_every_declared_choice_holds_its_default():
    for f in dataclasses.fields(Config):
        choices = field_choices(f.name)
        if choices is not None:
            assert f.default in choices, (f.name, f.default, choices)


@pytest.mark.parametrize("name", ["lr", "mode", "workers", "crop_scale_min"])
def test_train_option_help_is_the_config_description(name):
    action = _action("train", name)
    assert action.help.startswith(field_help(name) + " (")
    assert f"default: {getattr(Config(), name)}" in action.help


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        cli.run(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks
    assert "one of finetune, feature- extraction, scratch" in out or (
        "one of finetune, feature-extraction, scratch" in out
    )
    assert "one of imagenet, none, FILE" in out


def test_a_typo_in_mode_is_one_line_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--mode", "finetun"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "--mode" in err and "'finetun'" in err
    assert all(m in err for m in ("finetune", "feature-extraction", "scratch"))


def test_weights_take_a_name_or_an_existing_file(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--weights", str(weights)]).weights == str(weights)
    assert parser.parse_args(["train", "--weights", "none"]).weights == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--weights", str(tmp_path / "missing.pt")])
    assert "FILE" in capsys.readouterr().err


def _crash_with(monkeypatch, error: BaseException) -> None:
    def handler(args: argparse.Namespace) -> None:
        raise error

    real = cli.build_parser

    def build() -> argparse.ArgumentParser:
        ap = real()
        _sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        _sub.choices["card"].set_defaults(func=handler)
        return ap

    monkeypatch.setattr(cli, "build_parser", build)


def test_a_bug_inside_a_handler_shows_its_traceback(monkeypatch, capsys):
    monkeypatch.delenv("PNEUMOLIB_DEBUG", raising=False)
    _crash_with(monkeypatch, KeyError("mean"))
    with pytest.raises(KeyError, match="mean"):  # not `error: 'mean'`, exit 2
        cli.main(["card", "--run", "r"])
    assert "error:" not in capsys.readouterr().err
    _crash_with(monkeypatch, RuntimeError("deep inside"))
    with pytest.raises(RuntimeError, match="deep inside"):
        cli.main(["card", "--run", "r"])


def test_a_pneumolib_error_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.delenv("PNEUMOLIB_DEBUG", raising=False)
    _crash_with(monkeypatch, PneumolibError("r: not a run folder\nmore detail"))
    assert cli.main(["card", "--run", "r"]) == 2
    assert capsys.readouterr().err == "error: r: not a run folder\n"
    monkeypatch.setenv("PNEUMOLIB_DEBUG", "1")  # the full traceback, for bug reports
    with pytest.raises(PneumolibError):
        cli.main(["card", "--run", "r"])


def test_every_user_error_class_is_a_pneumolib_error():
    from pneumolib.base.errors import RunError
    from pneumolib.core.tasks import TaskError
    from pneumolib.data.cache_partial import CacheError
    from pneumolib.data.dicom import DicomError
    from pneumolib.data.labels import LabelError, SplitError
    from pneumolib.predict import ImageReadError

    for cls, old in [
        (RunError, RuntimeError),
        (CacheError, RuntimeError),
        (TaskError, ValueError),
        (DicomError, ValueError),
        (LabelError, ValueError),
        (SplitError, ValueError),
        (ImageReadError, ValueError),
    ]:
        assert issubclass(cls, PneumolibError) and issubclass(cls, old), cls


def test_workers_mean_the_same_in_preprocess_and_train(demo_raw, tmp_path, monkeypatch):
    """`--workers 0` = in this process, N = N processes, -1 (default) = one per core, for the
    cache build and the training loaders alike (both resolve it with `default_workers`)."""
    import pneumolib.data.preprocess as pre

    parser = cli.build_parser()
    pp = parser.parse_args(["preprocess", "--raw", "r", "--out", "c", "--workers", "0"])
    tr = cli.config_from_args(parser.parse_args(["train", "--workers", "0"]))
    assert pp.workers == tr.workers == 0
    defaults = parser.parse_args(["preprocess", "--raw", "r", "--out", "c"])
    assert defaults.workers == Config().workers == -1
    assert default_workers(0) == 0 and default_workers(3) == 3
    assert default_workers(-1) >= 1 and default_workers(-1, cap=1) == 1

    seen = []

    class Stop(Exception):
        pass

    def fill(*args, workers: int, **kw) -> None:  # the process count build_cache hands on
        seen.append(workers)
        raise Stop

    monkeypatch.setattr(pre, "fill", fill)
    for given in (0, 3, -1):
        out = tmp_path / f"cache{given}"
        with pytest.raises(Stop):
            cli.run(["preprocess", "--raw", str(demo_raw), "--out", str(out), "--size", "32",
                     "--workers", str(given)])  # fmt: skip
    assert seen == [0, 3, default_workers(-1)]


def test_the_train_loader_resolves_workers_the_same_way():
    pytest.importorskip("torch")
    from pneumolib.core import loader

    assert loader.default_workers is default_workers


def test_results_command_checks_then_rewrites_the_stale_blocks(tmp_path, monkeypatch, capsys):
    from pneumolib.course.results import make_table, write_results

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs").mkdir()
    table = make_table([{"benchmark": "loader", "ratio": 8.03}], formats={"ratio": "ratio"})
    write_results("loader", {"summary": table}, command=["python"], folder=tmp_path / "results")
    block = "<!-- results: loader -->\n| typed | 8.1× |\n<!-- /results -->\n"
    (tmp_path / "README.md").write_text("# r\n\n" + block)
    (tmp_path / "docs" / "performance.md").write_text(block)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["results", "--check"]) == 1
    out = capsys.readouterr().out
    assert "stale: README.md: loader" in out and "stale: docs/performance.md: loader" in out
    assert "8.1×" in (tmp_path / "README.md").read_text()  # --check changes nothing
    assert cli.main(["results"]) == 0
    assert "| loader | 8.03× |" in (tmp_path / "README.md").read_text()
    assert cli.main(["results", "--check"]) == 0
    assert "agree with results/ in 2 file(s)" in capsys.readouterr().out
