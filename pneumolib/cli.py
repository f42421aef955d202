"""`python -m pneumolib <command>`: the command line over the package (see README).

Each command validates its inputs, prints progress, and exits non-zero with a one-line reason
on bad input (no traceback for the user's mistakes; PNEUMOLIB_DEBUG=1 shows it anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from pneumolib.config import Config, field_choices, field_help
from pneumolib.core.errors import PneumolibError
from pneumolib.data.labels import CLASS_KEYS

# The user's errors, not bugs: one line, exit 2. The package raises PneumolibError on purpose;
# a path that is missing or already there is named by the OS. Anything else is a bug and shows
# its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (PneumolibError, FileNotFoundError, FileExistsError)


class _Parser(argparse.ArgumentParser):
    """argparse with the package's error contract: one `error: ...` line, exit code 2 (argparse's
    usage of a command with 50 options would bury the line that matters)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (options: {self.prog} --help)\n")


class _Choices:
    """A Config field's choices for argparse (`config.field_choices`), imported on first use:
    the modules that declare them import torch, and `preprocess` must start without it. With
    `or_file`, a path to an existing file is a choice too (listed as FILE)."""

    def __init__(self, name: str, *, or_file: bool = False) -> None:
        self.name, self.or_file = name, or_file

    @functools.cached_property
    def values(self) -> tuple[str, ...]:
        return field_choices(self.name) or ()

    def __contains__(self, value: object) -> bool:
        return value in self.values or (self.or_file and Path(str(value)).is_file())

    def __iter__(self) -> Iterator[str]:
        yield from self.values
        if self.or_file:
            yield "FILE"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def config_option(p: argparse.ArgumentParser, name: str, flag: str | None = None, **kw) -> None:
    """`--field-name` (or `flag`) for Config field `name`: its type, its choices, and help from
    its description and default. `kw` overrides argparse settings (the default is None, so
    `config_from_args` can tell the options given from those left out)."""
    f = Config.__dataclass_fields__[name]
    choices = None
    if f.metadata.get("choices"):
        choices = _Choices(name, or_file=f.metadata.get("or_file", False))
    text, default = (str(s).replace("%", "%%") for s in (field_help(name), f.default))
    default = "" if kw.get("required") else f"default: {default}"
    listed = "one of %(choices)s" if choices else ""  # argparse fills it in when help shows
    settings = {
        "dest": name,
        "type": {bool: _bool, int: int, float: float}.get(type(f.default), str),
        "default": None,
        "metavar": name.upper(),
        "choices": choices,
        "help": f"{text} ({'; '.join(s for s in (listed, default) if s)})".removesuffix(" ()"),
        **kw,
    }
    p.add_argument(flag or "--" + name.replace("_", "-"), **settings)


def add_config_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per Config field (default: the Config default)."""
    for f in dataclasses.fields(Config):
        if f.name not in skip:
            config_option(p, f.name)


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    base = base or Config()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Config)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **changes)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pneumolib` parser: one sub-command per pipeline stage, each with its
    handler in `func` (which imports its own modules: `preprocess` and `make-demo-data` start
    without torch, tested)."""
    ap = _Parser(prog="python -m pneumolib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (
        _add_demo,
        _add_make_demo_data,
        _add_preprocess,
        _add_train,
        _add_evaluate,
        _add_cam,
        _add_predict,
        _add_tune,
        _add_compare,
        _add_card,
        _add_publish,
    ):
        add(sub)
    return ap


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic data, minutes on a CPU")
    p.add_argument("--out", default="pneumolib_demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs")
    p.set_defaults(func=_demo)


def _add_make_demo_data(sub) -> None:
    p = sub.add_parser("make-demo-data", help="write an RSNA-shaped folder of phantom DICOMs")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--realism",
        default="rsna",
        choices=["rsna", "easy"],
        help="rsna: as hard as the real task (default); easy: a crisp signal",
    )
    p.add_argument("--shortcut", action="store_true", help="burn a PORTABLE marker into AP films")
    p.set_defaults(func=make_demo_data_cli)


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="build the packed cache from an RSNA folder")
    d = Config()  # the cache options are Config fields under other names
    config_option(p, "raw", required=True)
    config_option(p, "cache", "--out", required=True)
    config_option(p, "cache_size", "--size", default=d.cache_size)
    config_option(p, "workers", default=Config().workers)
    config_option(p, "split", default=d.split)
    config_option(p, "seed", default=d.seed)
    config_option(p, "val_frac", default=d.val_frac)
    config_option(p, "test_frac", default=d.test_frac)
    p.add_argument(
        "--decoder",
        default="opencv",
        choices=["opencv", "cuda", "cpu"],
        help="opencv (CPU, reduced-scale JPEG decode) or torchvision decode_jpeg on "
        "cuda (nvJPEG) / cpu",
    )
    p.add_argument("--full-decode", action="store_true", help="no reduced-scale JPEG decode")
    p.add_argument("--rebuild", action="store_true", help="replace a cache made differently")
    p.set_defaults(func=preprocess_cli)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or resume a run")
    add_config_options(p)
    p.set_defaults(func=_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="predictions, metrics and figures for a run")
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--tta", action="store_true", help="average over deterministic flips/shifts")
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=_evaluate)


def _add_cam(sub) -> None:
    p = sub.add_parser("cam", help="CAM / Grad-CAM overlays and localisation scores")
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--n", type=int, default=16, help="overlays to draw")
    p.add_argument("--method", default="cam", choices=["cam", "gradcam"])
    p.add_argument("--layer", default=None, help="Grad-CAM layer, e.g. layer2 (default: last)")
    p.add_argument(
        "--target",
        default="pneumonia",
        choices=["pneumonia", *CLASS_KEYS],
        help="the logit explained; the classes need a --task three-class run",
    )
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="pointing-game tolerance, px (default 0)"
    )
    p.add_argument("--tag", default="", help="name the output files cam_<split>_<tag>.*")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="a true positive is target 1 with probability >= this (default 0.5)",
    )
    p.set_defaults(func=_cam)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score DICOM/PNG/JPEG files with a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="files, folders or globs")
    p.add_argument("--out", help="CSV path (default: stdout)")
    p.add_argument("--cam", help="folder for heat-map overlays")
    config_option(p, "device", default=Config().device)
    p.set_defaults(func=_predict)


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="batch-size x learning-rate sweep (Optuna)")
    p.add_argument("--batch-sizes", default="16,32,64,128,256,512,1024")
    p.add_argument("--lrs", default="1e-4,2e-4")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in OUT)")
    p.add_argument("--study", default="grid")
    p.add_argument("--sampler", default="grid", choices=["grid", "random", "tpe"])
    p.add_argument("--n-trials", type=int, default=0, help="random/tpe: number of trials")
    p.add_argument("--max-micro-batch", type=int, default=0, help="0 = pick from GPU memory")
    p.add_argument(
        "--lr-scaling",
        default="none",
        choices=["none", "linear", "sqrt"],
        help="scale each lr with batch size relative to --ref-batch-size",
    )
    p.add_argument("--ref-batch-size", type=int, default=64)
    p.add_argument("--prune", action="store_true", help="median pruning (random/tpe only)")
    p.add_argument("--heartbeat", type=float, default=15.0, help="seconds between heartbeats")
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds without a heartbeat before a trial counts as dead",
    )
    p.add_argument(
        "--progress-timeout",
        type=float,
        default=None,
        help="seconds without a new step or epoch before a live trial counts as hung "
        "(default: tune.PROGRESS_TIMEOUT_S, 30 min)",
    )
    add_config_options(p, skip=("batch_size", "lr"))
    p.set_defaults(func=tune_cli)


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="RUN/MODEL_CARD.md from the run's own files")
    p.add_argument("--run", required=True)
    p.set_defaults(func=_card)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="runs on the same patients, with paired differences")
    p.add_argument("--run", action="append", required=True, help="a run folder (give 2 or more)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=_compare)


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="point the install cells and Colab badges at a repository")
    p.add_argument("--repo", help="https://github.com/OWNER/NAME (--check: default pyproject's)")
    p.add_argument(
        "--branch", help="the branch the badges open (default: main; --check: the badges' own)"
    )
    p.add_argument("--check", action="store_true", help="only list disagreements; exit 1 if any")
    p.set_defaults(func=lambda args: publish_cli(args.repo, args.branch, check=args.check))


# --- the handlers: one per command, each importing what it needs ------------------------------


def _demo(args: argparse.Namespace) -> None:
    from pneumolib.course.demo import run_demo

    run_demo(args.out, quick=args.quick)


def make_demo_data_cli(args: argparse.Namespace) -> None:
    """`python -m pneumolib make-demo-data` (starts without torch)."""
    from pneumolib.data.synth import make_demo_data

    out = make_demo_data(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        realism=args.realism,
        shortcut=args.shortcut,
    )
    print(f"demo data: {out} ({args.n} DICOMs of {args.size}x{args.size}, {args.realism})")


def preprocess_cli(args: argparse.Namespace) -> None:
    """`python -m pneumolib preprocess` (starts without torch)."""
    from pneumolib.data.preprocess import cache_for

    cfg = Config(
        raw=args.raw,
        cache=args.cache,
        cache_size=args.cache_size,
        split=args.split,
        seed=args.seed,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
    )
    cache_for(
        cfg,
        workers=args.workers,
        reduced=not args.full_decode,
        decoder=args.decoder,
        rebuild=args.rebuild,
    )


def _train(args: argparse.Namespace) -> None:
    from pneumolib.train.loop import fit

    saved = Path(args.out) / "config.json" if args.out else None
    base = Config.load(saved) if saved and saved.exists() else None  # resume the run's settings
    fit(config_from_args(args, base))


def _evaluate(args: argparse.Namespace) -> None:
    from pneumolib.evaluate.run import evaluate_run

    evaluate_run(args.run, args.split, tta=args.tta, n_boot=args.n_boot)


def _cam(args: argparse.Namespace) -> None:
    from pneumolib.cam.run import cam_run

    cam_run(
        args.run,
        args.split,
        n_overlays=args.n,
        method=args.method,
        layer=args.layer,
        target=args.target,
        tolerance=args.tolerance,
        tag=args.tag,
        threshold=args.threshold,
    )


def _predict(args: argparse.Namespace) -> int:
    from pneumolib.predict import predict_cli

    return predict_cli(
        args.checkpoint, args.inputs, out_csv=args.out, cam_dir=args.cam, device=args.device
    )


def _card(args: argparse.Namespace) -> None:
    from pneumolib.evaluate.card import write_card

    print(f"model card: {write_card(args.run)}")


def _compare(args: argparse.Namespace) -> None:
    from pneumolib.evaluate.compare import compare_runs, comparison_text

    result = compare_runs(args.run, args.split, threshold=args.threshold, n_boot=args.n_boot)
    print(comparison_text(result))


def publish_cli(repo: str | None, branch: str | None, *, check: bool) -> int:
    """`python -m pneumolib publish`: rewrite (or with `check`, verify) the derived URLs."""
    from pneumolib.core.errors import UsageError
    from pneumolib.course import publish

    root = publish.find_root()
    if not check:
        if repo is None:
            raise UsageError("publish: give --repo https://github.com/OWNER/NAME (or --check)")
        changed = publish.rewrite_sources(root, repo, branch=branch or "main")
        print(f"{len(changed)} file(s) now point at {publish.github_url(repo)}")
        for rel in changed:
            print(f"  {rel}")
    problems = publish.check_sources(root, repo, branch=branch)
    for line in problems:
        print(line)
    if check and not problems:
        print(f"install cells and Colab badges agree with {publish.declared_url(root)}")
    elif check:
        print("to point them all at one URL: python -m pneumolib publish --repo URL")
    return 1 if problems else 0


def _parse_list(text: str, kind: type, flag: str) -> list:
    """`16,32,64` -> [16, 32, 64]; a one-line error naming `flag` on a bad, empty or
    non-positive list."""
    from pneumolib.core.errors import UsageError

    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"{flag}: expected comma-separated {kind.__name__}s, got {text!r}"
        ) from None
    if not values:
        raise UsageError(f"{flag}: no values in {text!r}")
    if min(values) <= 0:
        raise UsageError(f"{flag}: expected positive values, got {text!r}")
    return values


def tune_cli(args: argparse.Namespace) -> None:
    """`python -m pneumolib tune`: the sweep into --out; prints the table."""
    # Heavy (pandas, and torch and optuna under tune): only when this command runs.
    import pandas as pd

    from pneumolib import tune

    cfg = config_from_args(args)
    table = tune.sweep(
        cfg,
        batch_sizes=_parse_list(args.batch_sizes, int, "--batch-sizes"),
        lrs=_parse_list(args.lrs, float, "--lrs"),
        storage=args.storage,
        study=args.study,
        sampler=args.sampler,
        n_trials=args.n_trials,
        max_micro_batch=args.max_micro_batch,
        lr_scaling=args.lr_scaling,
        ref_batch_size=args.ref_batch_size,
        prune=args.prune,
        heartbeat=args.heartbeat,
        grace=args.grace,
        progress_timeout=args.progress_timeout or tune.PROGRESS_TIMEOUT_S,
    )
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(table.drop(columns=["run_dir"]).to_string(index=False))
    print(f"results: {Path(cfg.out) / args.study}")


def run(argv: list[str] | None = None) -> int:
    """Parse `argv` and run its command's handler; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


def main(argv: list[str] | None = None) -> int:
    """`run`, with the error contract: the user's errors as one `error: ...` line (exit 2; the
    machine's OS errors exit 1), Ctrl-C as 130, bugs with their traceback."""
    debug = bool(os.environ.get("PNEUMOLIB_DEBUG"))  # the full traceback, for bug reports
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
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
