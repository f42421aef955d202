"""The command line's handlers: one per command, each importing what it needs when it runs
(so `preprocess` and `make-demo-data` start without torch)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pneumolib.base.config import Config


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """`base` (default Config()) with every Config option the user gave on the command line."""
    base = base or Config()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Config)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **changes)


def demo_command(args: argparse.Namespace) -> None:
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
        allow_any_input=args.allow_any_input,
    )


def train_command(args: argparse.Namespace) -> None:
    from pneumolib.train.loop import fit

    saved = Path(args.out) / "config.json" if args.out else None
    base = Config.load(saved) if saved and saved.exists() else None  # resume the run's settings
    fit(config_from_args(args, base))


def detect_command(args: argparse.Namespace) -> None:
    from pneumolib.detect.loop import fit_detector

    saved = Path(args.out) / "config.json"
    base = Config.load(saved) if saved.exists() else None  # resume the run's settings
    fit_detector(config_from_args(args, base))


def _kind(run: str | Path) -> str:
    """A run folder's (or a checkpoint's folder's) kind, read without torch; "classifier" where
    the folder says nothing readable, so the classifier's path names what is missing."""
    from pneumolib.base.errors import PneumolibError
    from pneumolib.base.rundir import BEST, trained_config

    path = Path(run)
    try:
        if path.is_file():
            return trained_config(path.parent, checkpoint=path.name).config.kind
        return trained_config(path, checkpoint=BEST).config.kind
    except (OSError, ValueError, PneumolibError):
        return "classifier"


def _is_detector_checkpoint(checkpoint: str) -> bool:
    """Whether file `checkpoint` is a detector run's, by its folder's records (torch-free); a
    file outside a run folder goes the classifier's way, which refuses a detector in one line."""
    try:
        return Path(checkpoint).is_file() and _kind(checkpoint) == "detector"
    except (OSError, ValueError):
        return False


def evaluate_command(args: argparse.Namespace) -> None:
    from pneumolib.base.errors import UsageError

    if _kind(args.run) == "detector":
        if args.tta or args.calibration:
            raise UsageError(f"{args.run}: a detector run takes no --tta or --calibration")
        from pneumolib.detect.evaluate import evaluate_detector

        evaluate_detector(args.run, args.split, gate=args.gate, n_boot=args.n_boot)
        return
    if args.gate:
        raise UsageError(
            f"--gate: {args.run} is a classifier run; the gate filters a detector run's boxes"
        )
    from pneumolib.evaluate.run import evaluate_run

    evaluate_run(
        args.run, args.split, tta=args.tta, n_boot=args.n_boot, calibration=args.calibration
    )


def cam_command(args: argparse.Namespace) -> None:
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


def predict_command(args: argparse.Namespace) -> int:
    if _is_detector_checkpoint(args.checkpoint):
        from pneumolib.base.errors import UsageError
        from pneumolib.detect.predict import predict_boxes_cli

        if args.cam or args.allow_any_input:
            raise UsageError(
                f"{args.checkpoint}: a detector checkpoint draws no heat maps and makes no "
                "chest-film check; leave out --cam and --allow-any-input"
            )

        return predict_boxes_cli(args.checkpoint, args.inputs, out_csv=args.out, device=args.device)
    from pneumolib.predict import predict_cli

    return predict_cli(
        args.checkpoint,
        args.inputs,
        out_csv=args.out,
        cam_dir=args.cam,
        device=args.device,
        operating_point=args.operating_point,
        allow_any_input=args.allow_any_input,
    )


def submit_command(args: argparse.Namespace) -> None:
    from pneumolib.submit import submit

    submit(args.run, args.images, args.out, gate=args.gate, device=args.device)


def card_command(args: argparse.Namespace) -> None:
    from pneumolib.evaluate.card import write_card

    print(f"model card: {write_card(args.run)}")


def compare_command(args: argparse.Namespace) -> None:
    from pneumolib.evaluate.compare import compare_runs, comparison_text

    result = compare_runs(args.run, args.split, threshold=args.threshold, n_boot=args.n_boot)
    print(comparison_text(result))


def publish_cli(repo: str | None, branch: str | None, *, check: bool) -> int:
    """`python -m pneumolib publish`: rewrite (or with `check`, verify) the derived URLs."""
    from pneumolib.base.errors import UsageError
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


def results_cli(*, check: bool) -> int:
    """`python -m pneumolib results`: re-render every results block of README.md,
    data_README.md and docs/*.md from the repository's results/ (`course.results`); with
    `check`, change nothing and exit 1 naming each stale block."""
    import os

    from pneumolib.course import publish, results

    root = publish.find_root()
    paths = [Path(os.path.relpath(p)) for p in results.documents(root)]
    blocks = results.sync_tables(paths, check=check, folders=[root / "results"])
    for block in blocks:
        print(f"{'stale' if check else 'rewritten'}: {block}")
    if check and blocks:
        print("to re-render them from results/: python -m pneumolib results")
        return 1
    if not blocks:
        print(f"results tables agree with results/ in {len(paths)} file(s)")
    return 0


def _parse_list(text: str, kind: type, flag: str) -> list:
    """`16,32,64` -> [16, 32, 64]; a one-line error naming `flag` on a bad, empty or
    non-positive list."""
    from pneumolib.base.errors import UsageError

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
