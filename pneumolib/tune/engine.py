"""One sweep worker and the driver: claim a point, train it (resuming its folder), report it to
the study, until no point is left; `sweep` sets up the study and writes the report."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import signal
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from pneumolib.base.config import Config
from pneumolib.base.errors import RunError, UsageError
from pneumolib.base.files import atomic_write
from pneumolib.base.owner import TakenOver, claim_run
from pneumolib.base.rundir import config_path, last_path, metrics_csv_path
from pneumolib.data.cache_check import verify_cache
from pneumolib.train import loop as train
from pneumolib.train.best_epoch import monitor_score
from pneumolib.tune.claims import (
    PROGRESS_TIMEOUT_S,
    Heartbeat,
    claim_point,
    points_to_claim,
    reap_stale,
)
from pneumolib.tune.figures import plot_curves, plot_heatmap, plot_slices
from pneumolib.tune.plan import (
    ORIGINAL_BATCH_SIZES,
    ORIGINAL_LRS,
    SAMPLERS,
    Plan,
    auto_max_micro_batch,
    make_plan,
    pick_micro_batch,
    run_name,
    scaled_lr,
    search_space,
    trial_config,
)
from pneumolib.tune.results import (
    history_summary,
    results_table,
    trial_histories,
    write_best,
)
from pneumolib.tune.storage import (
    log_event,
    masked_url,
    open_storage,
    open_study,
    retry,
    storage_url,
)


class _Lost(RuntimeError):
    """Another worker declared this worker's trial dead; stop training it."""


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How one worker runs its trials: what `sweep` was given besides the plan."""

    max_micro: int  # largest micro-batch; larger batches accumulate gradients over several
    n_trials: int = 0  # random/TPE: trials in the study (the grid has its own points)
    prune: bool = False  # median pruning of hopeless random/TPE trials
    heartbeat: float = 15.0  # seconds between this worker's heartbeats
    grace: float = 60.0  # seconds without a heartbeat before a trial counts as dead
    progress_timeout: float = PROGRESS_TIMEOUT_S  # seconds without a step or epoch: hung
    wait: bool = True  # wait for points running elsewhere, to take over those that die
    callback: Callable[[str, dict], None] | None = None  # gets fit's events, plus trial, run
    progress: bool = True  # progress bars while training


# --- one trial -------------------------------------------------------------------------------


def _fit(cfg: Config, callback: Callable, progress: bool, owner: str) -> tuple[dict, Config]:
    """`train.fit` as the folder's `owner`, retried with half the micro-batch when the GPU runs
    out of memory before the first checkpoint (a run with a checkpoint keeps its micro-batch)."""
    while True:
        try:
            return train.fit(cfg, callback=callback, progress=progress, owner=owner), cfg
        except torch.cuda.OutOfMemoryError:
            micro = cfg.micro_batch_size or cfg.batch_size
            if last_path(cfg.out).exists() or micro == 1:
                raise
            smaller = pick_micro_batch(cfg.batch_size, micro // 2)
            print(f"out of GPU memory with micro-batch {micro}; trying {smaller}")
            torch.cuda.empty_cache()
            cfg = cfg.replace(micro_batch_size=smaller)


def _trial_callback(
    trial: optuna.Trial, beat: Heartbeat, monitor: str, key: str, opts: SweepOptions
) -> Callable[[str, dict], None]:
    """fit's callback: stop when the trial was taken over, report each epoch, prune."""

    def on_event(event: str, state: dict) -> None:
        if beat.lost:
            raise _Lost(f"trial {trial.number} was taken over by another worker; this worker stops")
        beat.progress += 1  # a step or an epoch: the worker is not hung
        if event == "epoch":
            value = monitor_score(state["metrics"], monitor)
            if math.isfinite(value):
                retry(trial.report, value, state["epoch"] + 1)
            if opts.prune and trial.should_prune():
                raise optuna.TrialPruned()
        if opts.callback:
            opts.callback(event, {**state, "trial": trial.number, "run": key})

    return on_event


def _trial_setup(
    trial: optuna.Trial, plan: Plan, base: Config, run_dir: Path, max_micro: int
) -> tuple[Config, bool, str]:
    """(the trial's Config, whether it resumes, the log line saying where it starts)."""
    params = dict(trial.params)
    resuming = last_path(run_dir).exists() and config_path(run_dir).exists()
    if resuming:  # keep the micro-batch it began with (fit refuses another one)
        micro = Config.load(config_path(run_dir)).micro_batch_size or params["batch_size"]
    else:
        micro = pick_micro_batch(int(params["batch_size"]), max_micro)
    cfg = trial_config(
        base,
        params,
        micro=micro,
        out=run_dir,
        lr_scaling=plan.lr_scaling,
        ref_batch_size=plan.ref_batch_size or 64,
    )
    metrics = metrics_csv_path(run_dir)  # written just after last.pt: may lag one epoch behind
    done = len(pd.read_csv(metrics)) if resuming and metrics.exists() else 0
    how = f"epoch {done}/{cfg.epochs}, micro-batch {micro} x {cfg.batch_size // micro}"
    return cfg, resuming, how


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    plan: Plan,
    base: Config,
    study_dir: Path,
    opts: SweepOptions,
) -> str | None:
    """Train the claimed trial's point to the end (resuming its folder) and tell Optuna the
    result. Returns an error line, or None."""
    key = run_name(trial.params)
    run_dir = study_dir / key
    cfg, resuming, how = _trial_setup(trial, plan, base, run_dir, opts.max_micro)
    log_event(study_dir, "resume" if resuming else "start", run=key, trial=trial.number, detail=how)
    print(f"\n[{study.study_name}] trial {trial.number}: {key}, lr {cfg.lr:.3g}; {how}")
    retry(trial.set_user_attr, "run_dir", str(run_dir.resolve()))
    owner = claim_run(run_dir, trial=trial.number)  # a hung worker here stops at its next write
    beat = Heartbeat(trial, opts.heartbeat).start()
    on_event = _trial_callback(trial, beat, cfg.monitor, key, opts)
    state, error = None, None
    try:
        summary, cfg = _fit(cfg, on_event, opts.progress, owner)
        state, history = TrialState.COMPLETE, summary["history"]
    except optuna.TrialPruned:
        state, history = TrialState.PRUNED, pd.read_csv(metrics_csv_path(run_dir))
    except (_Lost, TakenOver) as e:  # the point goes on in the worker that took it over
        print(e)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (`cli.interrupt`): give it back at
        beat.stop()  # once, so that a re-run or another worker resumes it without waiting
        how = signal.Signals(getattr(stop, "signum", signal.SIGINT)).name
        log_event(study_dir, "interrupted", run=key, trial=trial.number, detail=how)
        retry(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except Exception as e:  # one point failing (e.g. out of memory) must not end the sweep
        error = f"{key}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    finally:
        beat.stop()
    if beat.lost or (state is None and error is None):
        log_event(
            study_dir, "lost", run=key, trial=trial.number, detail="taken over by another worker"
        )
        return None
    if error is None:
        info = history_summary(history, cfg.monitor)
        if state == TrialState.COMPLETE and not math.isfinite(info["score"]):
            error = f"{key}: validation {cfg.monitor} is not finite in any epoch"
    if error is not None:
        retry(trial.set_user_attr, "error", error)
        retry(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
        log_event(study_dir, "error", run=key, trial=trial.number, detail=error)
        print(f"trial {trial.number} failed: {error}")
        return error
    assert state is not None  # else error or the 'lost' return above
    _finish(study, trial, state, history, info, cfg, study_dir)
    return None


def _finish(
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    history: pd.DataFrame,
    info: dict,
    cfg: Config,
    study_dir: Path,
) -> None:
    """Keep the results in the trial (the table and curves need no run folder), then tell."""
    attrs = {k: v for k, v in info.items() if k != "score"}
    attrs.update(lr=cfg.lr, micro_batch_size=cfg.micro_batch_size or cfg.batch_size)
    attrs["history"] = {c: [float(v) for v in history[c]] for c in history.columns}
    for k, v in attrs.items():
        retry(trial.set_user_attr, k, v)
    if state == TrialState.COMPLETE:
        retry(study.tell, trial, values=[info["score"]], skip_if_finished=True)
    else:
        retry(study.tell, trial, state=state, skip_if_finished=True)
    key = run_name(trial.params)
    detail = f"{cfg.monitor} {info['score']:.4f} at epoch {info['best_epoch']}"
    log_event(study_dir, state.name.lower(), run=key, trial=trial.number, detail=detail)
    print(f"[{study.study_name}] {key}: {state.name.lower()}, {detail}")


# --- the worker loop and the driver --------------------------------------------------------------


def _work(
    study: optuna.Study,
    plan: Plan,
    base: Config,
    study_dir: Path,
    base_sampler: optuna.samplers.BaseSampler,
    opts: SweepOptions,
) -> list[str]:
    """Claim and run points until none is left; returns the errors met (one line each)."""
    rng = random.Random(os.urandom(8))
    watch: dict[int, tuple[Any, float]] = {}
    tried: set[str] = set()  # points that failed with an error in this process
    errors: list[str] = []
    waiting = 0
    while True:
        trials = retry(study.get_trials, deepcopy=False)
        if reap_stale(
            study,
            trials,
            watch=watch,
            grace=opts.grace,
            study_dir=study_dir,
            progress_timeout=opts.progress_timeout,
        ):
            continue
        todo, running = points_to_claim(trials, plan, opts.n_trials, tried)
        if not todo:
            if running and opts.wait:  # take over any of them whose worker dies
                if running != waiting:
                    print(
                        f"waiting: {running} point(s) running elsewhere; a point whose "
                        f"heartbeat stops for {opts.grace:g} s is taken over here"
                    )
                waiting = running
                time.sleep(min(opts.heartbeat, opts.grace / 2))
                continue
            return errors
        point = rng.choice(todo)
        trial = claim_point(study, plan, point=point, sampler=base_sampler, study_dir=study_dir)
        if trial is None:  # lost the race for that point: let the other worker go first
            time.sleep(rng.uniform(0.05, 0.5))
            continue
        error = _run_trial(study, trial, plan, base, study_dir, opts)
        if error:
            tried.add(run_name(trial.params))
            errors.append(error)


def write_report(
    study_dir: Path, table: pd.DataFrame, *, study: optuna.Study, base: Config, metric: str
) -> None:
    """results.csv, best_config.json and the heat map, slices and curves PNGs in `study_dir`."""
    atomic_write(study_dir / "results.csv", lambda p: table.to_csv(p, index=False))
    if (table["state"] == "complete").any() and table[metric].notna().any():
        write_best(table, study_dir / "best_config.json", base=base, metric=metric)
    shown = dict.fromkeys([metric, "val_accuracy", "val_precision"])  # the study's headline
    figures = {f"heatmap_{m}.png": plot_heatmap(table, m) for m in shown}
    figures[f"slices_{metric}.png"] = plot_slices(table, metric)
    figures["curves.png"] = plot_curves(trial_histories(study))
    for name, fig in figures.items():
        atomic_write(study_dir / name, partial(fig.savefig, format="png", dpi=100))


def _check_arguments(
    sampler: str, n_trials: int, prune: bool, study: str, lr_scaling: str, ref_batch_size: int
) -> None:
    """Refuse a sweep's arguments before anything is written."""
    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler: expected one of {SAMPLERS}, got {sampler!r}")
    if sampler != "grid" and n_trials < 1:
        raise UsageError(f"--sampler {sampler} needs --n-trials of at least 1")
    if prune and sampler == "grid":
        raise UsageError("pruning is off for the grid: every grid point runs all its epochs")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", study):
        raise UsageError(f"--study {study!r}: use letters, digits, '_', '-' or '.'")
    scaled_lr(1.0, 1, lr_scaling, ref_batch_size)  # validates the rule


def _sampler_and_pruner(
    sampler: str, n_trials: int, prune: bool
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner | None]:
    """The Optuna sampler for new random/TPE points and the pruner (None: no pruning)."""
    base_sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler()
    if sampler == "tpe":  # constant liar: workers running at once do not pile onto one point
        startup = min(10, max(2, n_trials // 3))
        base_sampler = optuna.samplers.TPESampler(constant_liar=True, n_startup_trials=startup)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if prune else None
    return base_sampler, pruner


def sweep(
    cfg: Config,
    *,
    batch_sizes: Sequence[int] = ORIGINAL_BATCH_SIZES,
    lrs: Sequence[float] = ORIGINAL_LRS,
    storage: str | None = None,
    study: str = "grid",
    sampler: str = "grid",
    n_trials: int = 0,
    max_micro_batch: int = 0,
    lr_scaling: str = "none",
    ref_batch_size: int = 64,
    prune: bool = False,
    metric: str | None = None,
    heartbeat: float = 15.0,
    grace: float = 60.0,
    progress_timeout: float = PROGRESS_TIMEOUT_S,
    wait: bool = True,
    callback: Callable[[str, dict], None] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or join, or finish) the sweep `study` in the folder `cfg.out`; returns its table.

    sampler="grid": every batch size x lr, each exactly once. "random"/"tpe": `n_trials`
    points over batch size, lr (range min..max of `lrs`), weight decay and augmentation
    strength. `lr_scaling` ("linear"/"sqrt"): the lr axis becomes a base lr at
    `ref_batch_size`, scaled to each batch size (use another `study` name for it).
    Batches larger than `max_micro_batch` (0: `cfg.micro_batch_size`, else measured on the
    GPU, 64 on a CPU) accumulate gradients over micro-batches. `prune` stops hopeless
    random/TPE trials early (median rule); the grid runs every point to the end.
    Several processes may run this on one `storage` at once; re-running it after a crash
    finishes only what is left. A worker returns when every point is finished (with
    `wait`, it also waits for points running elsewhere, to take over those that die, or
    that hang: no new step or epoch for `progress_timeout` seconds).
    Writes results.csv, best_config.json (by `metric`, default val_<monitor>) and figures
    into SWEEP/<study>/.
    """
    _check_arguments(sampler, n_trials, prune, study, lr_scaling, ref_batch_size)
    verify_cache(cfg.cache)  # a missing or damaged cache fails here, not once per trial
    sweep_dir = Path(cfg.out)
    study_dir = sweep_dir / study
    study_dir.mkdir(parents=True, exist_ok=True)
    lr_name = "lr" if lr_scaling == "none" else "base_lr"
    space = search_space(sampler, batch_sizes, lrs, lr_name)
    plan = make_plan(
        cfg, sampler, space=space, lr_scaling=lr_scaling, ref_batch_size=ref_batch_size
    )
    base_sampler, pruner = _sampler_and_pruner(sampler, n_trials, prune)
    st = open_storage(storage, sweep_dir)
    opt_study = open_study(st, study, plan=plan, sampler=base_sampler, pruner=pruner)
    max_micro = max_micro_batch or cfg.micro_batch_size or auto_max_micro_batch(cfg)
    print(
        f"sweep {study!r}: {sampler}, {masked_url(storage_url(storage, sweep_dir))}; run folders "
        f"in {study_dir}; micro-batches of at most {max_micro}"
    )
    opts = SweepOptions(
        max_micro=max_micro,
        n_trials=n_trials,
        prune=prune,
        heartbeat=heartbeat,
        grace=grace,
        progress_timeout=progress_timeout,
        wait=wait,
        callback=callback,
        progress=progress,
    )
    errors = _work(opt_study, plan, cfg, study_dir, base_sampler, opts)
    table = results_table(opt_study)
    if not table.empty:
        metric = metric or f"val_{cfg.monitor}"
        write_report(study_dir, table, study=opt_study, base=cfg, metric=metric)
    if errors:
        raise RunError(
            f"{len(errors)} trial(s) failed, first: {errors[0]} (all in {study_dir / 'sweep.log'})"
        )
    return table
