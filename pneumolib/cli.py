"""`python -m pneumolib <command>`: the command line over the package (see README).

Each command validates its inputs, prints progress, and exits non-zero with a one-line reason
on bad input (no traceback for the user's mistakes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from pneumolib.config import Config
from pneumolib.data.labels import CLASS_KEYS

# Errors that are the user's input, not a bug: one line, exit 2.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    ValueError,
    RuntimeError,
    KeyError,
)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per Config field (default: the Config default)."""
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        kind = {bool: _bool, int: int, float: float}.get(type(f.default), str)
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=None,
            metavar=f.name.upper(),
            help=f"(default: {f.default})",
        )


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    base = base or Config()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Config)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **changes)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pneumolib` parser: one sub-command per pipeline stage."""
    ap = argparse.ArgumentParser(prog="python -m pneumolib", description=__doc__)
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


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="build the packed cache from an RSNA folder")
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="0 = one per core")
    p.add_argument("--split", default="stratified", choices=["stratified", "course"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-frac", type=float, default=0.15)
    p.add_argument("--test-frac", type=float, default=0.15)
    p.add_argument(
        "--decoder",
        default="opencv",
        choices=["opencv", "cuda", "cpu"],
        help="opencv (CPU, reduced-scale JPEG decode) or torchvision decode_jpeg on "
        "cuda (nvJPEG) / cpu",
    )
    p.add_argument("--full-decode", action="store_true", help="no reduced-scale JPEG decode")
    p.add_argument("--rebuild", action="store_true", help="replace a cache made differently")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or resume a run")
    add_config_options(p)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="predictions, metrics and figures for a run")
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--tta", action="store_true", help="average over deterministic flips/shifts")
    p.add_argument("--n-boot", type=int, default=1000)


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


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score DICOM/PNG/JPEG files with a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="files, folders or globs")
    p.add_argument("--out", help="CSV path (default: stdout)")
    p.add_argument("--cam", help="folder for heat-map overlays")
    p.add_argument("--device", default="auto")


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


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="RUN/MODEL_CARD.md from the run's own files")
    p.add_argument("--run", required=True)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="runs on the same patients, with paired differences")
    p.add_argument("--run", action="append", required=True, help="a run folder (give 2 or more)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--n-boot", type=int, default=1000)


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="point the install cells and Colab badges at a repository")
    p.add_argument("--repo", help="https://github.com/OWNER/NAME (--check: default pyproject's)")
    p.add_argument(
        "--branch", help="the branch the badges open (default: main; --check: the badges' own)"
    )
    p.add_argument("--check", action="store_true", help="only list disagreements; exit 1 if any")


def publish_cli(repo: str | None, branch: str | None, check: bool) -> int:
    """`python -m pneumolib publish`: rewrite (or with `check`, verify) the derived URLs."""
    from pneumolib.course import publish

    root = publish.find_root()
    if not check:
        if repo is None:
            raise ValueError("publish: give --repo https://github.com/OWNER/NAME (or --check)")
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
    """`16,32,64` -> [16, 32, 64]; a one-line error naming `flag` on a bad or empty list."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"{flag}: expected comma-separated {kind.__name__}s, got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"{flag}: no values in {text!r}")
    return values


def tune_cli(args: argparse.Namespace, cfg: Config) -> None:
    """`python -m pneumolib tune`: the sweep into `cfg.out` (the --out folder); prints the table."""
    # Heavy (pandas, and torch and optuna under tune): only when this command runs.
    import pandas as pd

    from pneumolib import tune

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
        cache=args.out,
        cache_size=args.size,
        split=args.split,
        seed=args.seed,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
    )
    cache_for(
        cfg,
        workers=args.workers or None,
        reduced=not args.full_decode,
        decoder=args.decoder,
        rebuild=args.rebuild,
    )


def run(argv: list[str] | None = None) -> int:
    """Parse `argv` and run its command. Each command imports its module in its own branch:
    `preprocess` and `make-demo-data` must start without torch (tested)."""
    args = build_parser().parse_args(argv)
    cmd = args.command
    if cmd == "demo":
        from pneumolib.course.demo import run_demo

        run_demo(args.out, quick=args.quick)
    elif cmd == "make-demo-data":
        make_demo_data_cli(args)
    elif cmd == "preprocess":
        preprocess_cli(args)
    elif cmd == "train":
        from pneumolib.train.loop import fit

        base = (
            Config.load(Path(args.out) / "config.json")
            if args.out and (Path(args.out) / "config.json").exists()
            else None
        )
        fit(config_from_args(args, base))
    elif cmd == "evaluate":
        from pneumolib.evaluate.run import evaluate_run

        evaluate_run(args.run, args.split, tta=args.tta, n_boot=args.n_boot)
    elif cmd == "cam":
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
    elif cmd == "card":
        from pneumolib.evaluate.card import write_card

        print(f"model card: {write_card(args.run)}")
    elif cmd == "compare":
        from pneumolib.evaluate.compare import compare_runs, comparison_text

        result = compare_runs(args.run, args.split, threshold=args.threshold, n_boot=args.n_boot)
        print(comparison_text(result))
    elif cmd == "predict":
        from pneumolib.predict import predict_cli

        return predict_cli(
            args.checkpoint, args.inputs, out_csv=args.out, cam_dir=args.cam, device=args.device
        )
    elif cmd == "tune":
        tune_cli(args, config_from_args(args))
    elif cmd == "publish":
        return publish_cli(args.repo, args.branch, args.check)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        if os.environ.get("PNEUMOLIB_DEBUG"):  # the full traceback, for bug reports
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's trouble (full disk, permissions, I/O): one line too
        if os.environ.get("PNEUMOLIB_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
