"""The command line's parser: every command's options, Config fields as options (their help
and choices declared beside the fields), and each command's handler (`cli.commands`)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

from pneumolib.base.config import Config, field_choices, field_help
from pneumolib.base.errors import PneumolibError
from pneumolib.cli.commands import (
    cam_command,
    card_command,
    compare_command,
    demo_command,
    detect_command,
    evaluate_command,
    make_demo_data_cli,
    predict_command,
    preprocess_cli,
    publish_cli,
    results_cli,
    submit_command,
    train_command,
    tune_cli,
)
from pneumolib.data.labels import CLASS_KEYS

# The user's errors, not bugs: one line, exit 2. The package raises PneumolibError on purpose;
# a path that is missing or already there is named by the OS. Anything else is a bug and shows
# its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (PneumolibError, FileNotFoundError, FileExistsError)


DESCRIPTION = """`python -m pneumolib <command>`: the command line over the package (see README).

Each command validates its inputs, prints progress, and exits non-zero with a one-line reason
on bad input (no traceback for the user's mistakes; PNEUMOLIB_DEBUG=1 shows it anyway).
"""


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


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pneumolib` parser: one sub-command per pipeline stage, each with its
    handler in `func` (which imports its own modules: `preprocess` and `make-demo-data` start
    without torch, tested)."""
    ap = _Parser(prog="python -m pneumolib", description=DESCRIPTION)
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (
        _add_demo,
        _add_make_demo_data,
        _add_preprocess,
        _add_train,
        _add_detect,
        _add_evaluate,
        _add_cam,
        _add_predict,
        _add_submit,
        _add_tune,
        _add_compare,
        _add_card,
        _add_publish,
        _add_results,
    ):
        add(sub)
    return ap


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic data, minutes on a CPU")
    p.add_argument("--out", default="pneumolib_demo", help="output folder (default: %(default)s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="200 phantoms, 3 epochs, the sweep at 64 px: a few minutes",
    )
    p.set_defaults(func=demo_command)


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
    p.add_argument(
        "--allow-any-input",
        action="store_true",
        help="keep images that are not chest films: a header saying CT, MR, US... or another "
        "body part, colour images, images under 64 px a side or more than twice as long as "
        "wide (default: listed in errors.csv and left out)",
    )
    p.add_argument(  # the same switch under its other name, kept out of the help
        "--allow-any-modality", dest="allow_any_input", action="store_true", help=argparse.SUPPRESS
    )
    p.set_defaults(func=preprocess_cli)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or resume a run")
    add_config_options(p, skip=("kind",))  # the command is the kind: train or detect
    p.set_defaults(func=train_command)


# Config fields that a detector run does not use: what it learns is fixed (the pneumonia boxes,
# judged on val rsna_map), and the model is not compiled or laid out channels-last.
DETECT_SKIPS = ("kind", "task", "label", "pos_weight", "monitor", "compile", "channels_last")


def _add_detect(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="train or resume a box detector (torchvision FCOS, ResNet-FPN)",
        description="Train (or resume, with the same command) a box detector on the cache's "
        "expert boxes, with the classifier's loaders, augmentation (which moves the boxes), "
        "optimiser, schedule, mixed precision and run folder; the best epoch is the one with "
        "the highest val rsna_map. The train options that do not apply are left out: --task, "
        "--label (the boxes are pneumonia's), --pos-weight, --monitor (always rsna_map), "
        "--compile and --channels-last; multi-GPU (torchrun) runs are not supported.",
    )
    config_option(p, "cache", required=True)
    config_option(p, "out", required=True)
    config_option(
        p,
        "weights",
        choices=None,
        metavar="WEIGHTS",
        help="the ResNet body's starting weights: imagenet (downloaded), none, a classifier "
        "run folder or its checkpoint (its backbone), or a torchvision ResNet state-dict FILE "
        f"(default: {Config().weights})",
    )
    add_config_options(p, skip=(*DETECT_SKIPS, "cache", "out", "weights"))
    p.set_defaults(func=detect_command)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="predictions, metrics and figures for a run")
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--tta", action="store_true", help="average over deterministic flips/shifts")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument(
        "--calibration",
        default=None,
        choices=["temperature", "platt", "isotonic", "none"],  # evaluate.calibration.METHODS
        help="fitted on val after the prior correction, written to RUN/calibration.json "
        "(default: platt for the binary task, temperature for three-class; platt and isotonic "
        "are for the binary task)",
    )
    p.add_argument(
        "--gate",
        metavar="CLASSIFIER_RUN",
        help="a detector run only: also score its boxes kept only where this classifier run "
        "calls the image positive at its val-chosen youden operating point",
    )
    p.set_defaults(func=evaluate_command)


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
    p.set_defaults(func=cam_command)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score DICOM/PNG/JPEG files with a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="files, folders or globs")
    p.add_argument("--out", help="CSV path (default: stdout)")
    p.add_argument("--cam", help="folder for heat-map overlays")
    p.add_argument(
        "--operating-point",
        default="sens90",  # evaluate.calibration.DEFAULT_OPERATING_POINT (a test checks)
        metavar="NAME",
        help="the threshold of the CSV's `positive` column, chosen on val by `evaluate` on the "
        "calibrated probability: sens90 (default: the highest threshold that still calls 90%% "
        "of val pneumonia cases positive; a screening aid should miss few cases and leave the "
        "rest to a reader), youden (max sensitivity + specificity - 1), best_f1, 0.5, or any "
        "number in [0, 1]",
    )
    p.add_argument(
        "--allow-any-input",
        action="store_true",
        help="decide `positive` also for inputs flagged as not like a chest film (colour, tiny, "
        "odd shape, another modality or body part, or far from the training films); they are "
        "still flagged in `in_distribution`",
    )
    config_option(p, "device", default=Config().device)
    p.set_defaults(func=predict_command)


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
    add_config_options(p, skip=("batch_size", "lr", "kind"))
    p.set_defaults(func=tune_cli)


def _add_submit(sub) -> None:
    p = sub.add_parser("submit", help="Kaggle's submission file for a folder of DICOMs")
    p.add_argument(
        "--run",
        required=True,
        help="a detector run (its boxes) or a classifier run (its CAM boxes, fitted by cam)",
    )
    p.add_argument("--images", required=True, help="the folder of DICOMs, e.g. stage_2_test_images")
    p.add_argument("--out", required=True, help="the CSV to write (patientId,PredictionString)")
    p.add_argument(
        "--gate",
        help="a classifier run: keep an image's boxes only where it calls the image positive "
        "at its val-chosen youden operating point",
    )
    config_option(p, "device", default=Config().device)
    p.set_defaults(func=submit_command)


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="RUN/MODEL_CARD.md from the run's own files")
    p.add_argument("--run", required=True)
    p.set_defaults(func=card_command)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="runs on the same patients, with paired differences")
    p.add_argument("--run", action="append", required=True, help="a run folder (give 2 or more)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=compare_command)


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="point the install cells and Colab badges at a repository")
    p.add_argument("--repo", help="https://github.com/OWNER/NAME (--check: default pyproject's)")
    p.add_argument(
        "--branch", help="the branch the badges open (default: main; --check: the badges' own)"
    )
    p.add_argument("--check", action="store_true", help="only list disagreements; exit 1 if any")
    p.set_defaults(func=lambda args: publish_cli(args.repo, args.branch, check=args.check))


def _add_results(sub) -> None:
    p = sub.add_parser("results", help="re-render the README's and docs' tables from results/")
    p.add_argument("--check", action="store_true", help="only list stale tables; exit 1 if any")
    p.set_defaults(func=lambda args: results_cli(check=args.check))
