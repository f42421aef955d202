"""Batch-size x learning-rate sweeps on Optuna that survive dropped sessions and share workers.

The original study: batch sizes 16 ... 1024 x learning rates 1e-4 and 2e-4 at a fixed number
of epochs. `sweep(cfg, batch_sizes, lrs)` runs it (or a random/TPE search that also varies
weight decay and augmentation strength) as one Optuna study kept in a storage given by URL:
an SQLite file (default: SWEEP/study.db), any SQLAlchemy database (PostgreSQL for many
machines) or a journal file (`*.log`, where SQLite locking on a network drive is a problem).
Every trial is a normal run folder SWEEP/<study>/<run> made by `pneumolib.train.fit` and
named after its parameters (`bs64_lr0.0001`), so a trial that was killed resumes from its
`last.pt` when its point is run again; `sweep` then returns the results table.

Exactly once with several workers. Optuna's GridSampler may give one point to two workers and
counts a killed trial as finished (see its docstring), so the engine plans the points itself
and uses the study as the shared record:
- a worker claims a point by creating a trial with its parameters and then reading the study;
  if another trial holds that point (running or finished) it backs off (FAIL, "duplicate").
  Of two claims the later-committed one always sees the earlier, so at most one of them runs;
- while it trains, the worker writes a heartbeat into its trial every `heartbeat` seconds. A
  running trial whose heartbeat stays unchanged for `grace` seconds, timed by another worker's
  own clock (clock skew between machines does not matter), is marked FAIL and its point is
  claimed again; that run resumes from the dead trial's checkpoint. The worker also counts
  its optimiser steps and epochs into the trial (`progress`): a trial whose worker is alive but
  hung (heartbeat fresh, count unchanged for `progress_timeout` seconds) is taken over the same
  way;
- a COMPLETE or PRUNED point is never claimed again, so re-running the same call (a new Colab
  session) only does what is left. Each claim, resume and result is a line in
  SWEEP/<study>/sweep.log.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator
from optuna.trial import TrialState

from pneumolib import runtime, train
from pneumolib.augment import AugmentPolicy
from pneumolib.config import Config
from pneumolib.data import read_index, read_stats
from pneumolib.loader import make_loader
from pneumolib.models import build_model, trainable_parameters
from pneumolib.progress import bar as progress_bar

ORIGINAL_BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024)
ORIGINAL_LRS = (1e-4, 2e-4)
CPU_MAX_MICRO = 64  # micro-batch cap on a CPU (memory is rarely the limit there, time is)
SAMPLERS = ("grid", "random", "tpe")
LR_RULES = ("none", "linear", "sqrt")
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)  # random/TPE search ranges (log-uniform)
AUG_STRENGTH_RANGE = (0.0, 2.0)  # 0 = no augmentation, 1 = the config's policy, 2 = twice as wide
METRICS = ("val_auc", "val_accuracy", "val_precision", "val_recall", "val_loss")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Seconds a running trial may go without a new step or epoch before it counts as hung. A step
# takes well under a second on a GPU (a full RSNA epoch a few minutes) and at most a minute or
# two on a CPU at batch 1,024; the longest silent stretches (validation, torch.compile, a
# checkpoint on Drive) take minutes. 30 minutes is far above them all, yet frees a hung GPU.
PROGRESS_TIMEOUT_S = 1800.0
# Config fields that may differ between the workers of one study: where and how fast, not what.
LOCAL_FIELDS = set("out cache raw device workers compile eval_batch_size".split())
LOCAL_FIELDS |= set("micro_batch_size amp channels_last gpu_augment deterministic".split())
AUG_FIELDS = "rotate_deg translate scale_min scale_max crop_scale_min".split()
AUG_FIELDS += "crop_ratio_min crop_ratio_max brightness contrast".split()


class _Lost(RuntimeError):
    """Another worker declared this worker's trial dead; stop training it."""


# --- points, run folders and configs -----------------------------------------------------


def pick_micro_batch(batch_size: int, max_micro: int) -> int:
    """The largest divisor of `batch_size` that is at most `max_micro` (at least 1)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    cap = max(1, min(batch_size, max_micro))
    return next(d for d in range(cap, 0, -1) if batch_size % d == 0)


def scaled_lr(base_lr: float, batch_size: int, rule: str = "none", ref_batch_size: int = 64):
    """Learning rate for `batch_size` by a scaling rule: none, linear or sqrt in bs / ref."""
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * batch_size / ref_batch_size
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / ref_batch_size)
    raise ValueError(f"lr scaling: expected one of {LR_RULES}, got {rule!r}")


def with_aug_strength(cfg: Config, s: float) -> Config:
    """Scale every augmentation range of `cfg` by `s` (0 = none, 1 = as is, 2 = twice as wide)."""
    return cfg.replace(
        rotate_deg=cfg.rotate_deg * s,
        translate=cfg.translate * s,
        scale_min=max(0.1, 1 - (1 - cfg.scale_min) * s),
        scale_max=1 + (cfg.scale_max - 1) * s,
        crop_scale_min=min(1.0, max(0.05, 1 - (1 - cfg.crop_scale_min) * s)),
        crop_ratio_min=math.exp(math.log(cfg.crop_ratio_min) * s),
        crop_ratio_max=math.exp(math.log(cfg.crop_ratio_max) * s),
        brightness=cfg.brightness * s,
        contrast=cfg.contrast * s,
    )


def run_name(params: Mapping[str, Any]) -> str:
    """The run-folder name of a point, e.g. `bs64_lr0.0001`: a function of the point only."""
    parts = [f"bs{int(params['batch_size'])}"]
    tags = (("lr", "lr"), ("base_lr", "blr"), ("weight_decay", "wd"), ("aug_strength", "aug"))
    parts += [f"{tag}{float(params[k]):g}" for k, tag in tags if k in params]
    return "_".join(parts)


def trial_config(
    base: Config,
    params: Mapping[str, Any],
    micro: int,
    out: str | Path,
    lr_scaling: str = "none",
    ref_batch_size: int = 64,
) -> Config:
    """The Config of one point: `base` with the point's batch size, lr (scaled from `base_lr`
    when the point has one), weight decay and augmentation strength, micro-batch and folder."""
    bs = int(params["batch_size"])
    lr = (
        params["lr"]
        if "lr" in params
        else scaled_lr(params["base_lr"], bs, lr_scaling, ref_batch_size)
    )
    cfg = base.replace(batch_size=bs, lr=float(lr), micro_batch_size=int(micro), out=str(out))
    if "weight_decay" in params:
        cfg = cfg.replace(weight_decay=float(params["weight_decay"]))
    if "aug_strength" in params:
        cfg = with_aug_strength(cfg, float(params["aug_strength"]))
    return cfg


def search_space(
    sampler: str, batch_sizes: Sequence[int], lrs: Sequence[float], lr_name: str = "lr"
) -> dict[str, list]:
    """Grid: the values of each axis. Random/TPE: batch sizes, and [low, high] ranges for the
    learning rate (min..max of `lrs`, or x/10..10x for a single value), weight decay and
    augmentation strength."""
    bs = [int(b) for b in batch_sizes]
    lrs = [float(x) for x in lrs]
    if not bs or not lrs or min(bs) < 1 or min(lrs) <= 0:
        raise ValueError(f"need positive batch sizes and learning rates, got {bs} and {lrs}")
    if sampler == "grid":
        return {"batch_size": bs, lr_name: lrs}
    lo, hi = (min(lrs), max(lrs)) if min(lrs) < max(lrs) else (lrs[0] / 10, lrs[0] * 10)
    return {
        "batch_size": sorted(set(bs)),
        lr_name: [lo, hi],
        "weight_decay": list(WEIGHT_DECAY_RANGE),
        "aug_strength": list(AUG_STRENGTH_RANGE),
    }


def grid_points(space: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as parameter dicts."""
    names = list(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*space.values())]


# --- GPU memory ----------------------------------------------------------------------------


def auto_max_micro_batch(cfg: Config, fraction: float = 0.6) -> int:
    """The largest power-of-two micro-batch that fits the device, for `cfg.model` at
    `cfg.image_size`: measured by two short forward/backward passes (8 and 16 images) on a
    CUDA GPU (`fraction` of the free memory); `CPU_MAX_MICRO` on a CPU."""
    device = runtime.resolve_device(cfg.device)
    if device.type != "cuda":
        return CPU_MAX_MICRO
    try:
        per_image, free = _probe_cuda(cfg, device)
    except RuntimeError as e:  # a probe that fails must not stop the sweep
        print(f"micro-batch probe failed ({str(e).splitlines()[0]}); using 32")
        return 32
    finally:
        torch.cuda.empty_cache()  # the probe's model is gone: give its memory back
    n = max(1, int(free * fraction / per_image))
    return int(min(1024, 2 ** int(math.log2(n))))


def _probe_cuda(cfg: Config, device: torch.device) -> tuple[float, int]:
    """(bytes per image of one training step, free bytes with the model loaded)."""
    model = build_model(cfg.model, cfg.mode, "none").to(device)
    channels_last = cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = train.make_optimizer(trainable_parameters(model), cfg)
    dtype = runtime.amp_dtype(device, cfg.amp)

    def peak(b: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        x = torch.randn(b, 1, cfg.image_size, cfg.image_size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del x, loss
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start

    peak(8)  # warm-up: optimiser state and cuDNN workspaces exist from here on
    per_image = max((peak(16) - peak(8)) / 8, 1.0)
    return per_image, torch.cuda.mem_get_info(device)[0]


# --- storage and study -----------------------------------------------------------------------


def _retry(fn: Callable[..., Any], *args: Any, tries: int = 8, **kwargs: Any) -> Any:
    """Call `fn`, retrying on the transient errors of a busy shared database (SQLite locks)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

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
    raise ValueError(
        f"--storage {storage!r}: expected a database URL (sqlite:///FILE.db, "
        "postgresql://...) or a journal file ending in .log or .journal"
    )


def open_storage(storage: str | None, sweep_dir: str | Path) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL, a journal file path (.log/.journal), or None (SQLite in
    SWEEP). SQLite waits up to two minutes for a lock instead of failing at once."""
    url = storage_url(storage, sweep_dir)
    if "://" not in url:  # a journal file: appends under a file lock, no database needed
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(url, lock_obj=JournalFileOpenLock(url))
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        kwargs = {"pool_pre_ping": True}
    try:
        return _retry(optuna.storages.RDBStorage, url, engine_kwargs=kwargs)
    except Exception as e:  # a wrong URL, an unreachable server, a missing database driver
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"--storage {_masked(url)}: cannot open it ({reason})") from e


def _masked(url: str) -> str:
    """The storage URL with any password hidden, for printing."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only the scheme
        return url.split("://")[0] + "://..."


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _plan(cfg: Config, sampler: str, space: dict, lr_scaling: str, ref: int) -> dict[str, Any]:
    """What every worker of a study must agree on: the points and the fixed settings."""
    swept = {"batch_size", "lr"} | (set() if sampler == "grid" else {"weight_decay", *AUG_FIELDS})
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_FIELDS | swept}
    plan = {"sampler": sampler, "space": space, "lr_scaling": lr_scaling, "config": fixed}
    plan["ref_batch_size"] = ref if lr_scaling != "none" else None
    return _jsonable(plan)


def _plan_diff(old: dict, new: dict) -> dict[str, tuple]:
    diff = {k: (old.get(k), new.get(k)) for k in new if k != "config" and old.get(k) != new[k]}
    a, b = old.get("config", {}), new["config"]
    diff.update({k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
    return diff


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    plan: dict[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or join study `name`; a study made with another plan (points or fixed settings)
    is refused, so one study never mixes two experiments."""
    study = _retry(
        optuna.create_study,
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler or optuna.samplers.RandomSampler(),
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    old = study.user_attrs.get("plan")
    if old is None:
        _retry(study.set_user_attr, "plan", plan)
    elif old != plan:
        raise ValueError(
            f"study {name!r} was made with other settings {_plan_diff(old, plan)}; "
            "use another --study (or --out), or the same settings"
        )
    return study


def load_sweep(sweep_dir: str | Path, study: str = "grid", storage: str | None = None):
    """The Optuna study of a finished or running sweep (for `results_table` and the plots)."""
    return optuna.load_study(study_name=study, storage=open_storage(storage, sweep_dir))


# --- one worker -----------------------------------------------------------------------------


def _log(study_dir: Path, event: str, run: str, trial: int | str, detail: str = "") -> None:
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


class _Heartbeat:
    """Writes the time into the trial every `interval` s from a thread, and `progress` (steps
    and epochs counted by the training callback) when it changed; `lost` turns True when the
    trial is no longer RUNNING (another worker declared it dead)."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval, self.lost = trial, interval, False
        self.progress, self._written = 0, -1  # only a count: the callback never waits on the db
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.trial.set_user_attr("heartbeat", time.time())
                if self.progress != self._written:
                    done = self.progress  # the callback may count on meanwhile
                    self.trial.set_user_attr("progress", done)
                    self._written = done
            except optuna.exceptions.UpdateFinishedTrialError:
                self.lost = True
                return
            except Exception:  # a busy database: the next beat tries again
                pass
            self._stop.wait(self.interval)


def _stale_reason(t, watch: dict, now: float, grace: float, progress_timeout: float) -> str | None:
    """Why the running trial `t` is stale, or None. `watch[t.number]` keeps the heartbeat and
    progress this worker last saw and when (its own clock: skew between machines is moot)."""
    beat, prog = t.user_attrs.get("heartbeat"), t.user_attrs.get("progress")
    seen = watch.get(t.number) or (beat, now, prog, now)
    if seen[0] != beat:
        seen = (beat, now, *seen[2:])
    if seen[2] != prog:
        seen = (*seen[:2], prog, now)
    watch[t.number] = seen
    if now - seen[1] > grace:
        return f"no heartbeat for {grace:g} s"
    if prog is not None and now - seen[3] > progress_timeout:  # None: a worker without counts
        return f"no progress (step or epoch) for {progress_timeout:g} s"
    return None


def _reap_stale(
    study, trials, watch: dict, grace: float, study_dir: Path, progress_timeout: float = math.inf
) -> bool:
    """Mark FAIL the running trials whose heartbeat this worker has seen unchanged for
    `grace` seconds, or their progress for `progress_timeout`; True when it marked one."""
    now, reaped, running = time.monotonic(), False, set()
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        running.add(t.number)
        why = _stale_reason(t, watch, now, grace, progress_timeout)
        if why is not None:
            _retry(study.tell, t.number, state=TrialState.FAIL, skip_if_finished=True)
            run = t.user_attrs.get("run", "-")
            _log(study_dir, "stale", run, t.number, why)
            print(f"trial {t.number} ({run}): {why}, taking it over")
            reaped = True
    for n in set(watch) - running:
        del watch[n]
    return reaped


def _todo(trials, plan: dict, n_trials: int, tried: set[str]) -> tuple[list, int]:
    """(points to claim, number of points running elsewhere). A point is a parameter dict;
    None stands for a new random/TPE point."""
    done, running, errored, retry = set(), set(), set(), {}
    for t in trials:
        key = t.user_attrs.get("run")
        if key is None or t.user_attrs.get("duplicate"):
            continue
        if t.state in FINISHED:
            done.add(key)
        elif t.state == TrialState.RUNNING:
            running.add(key)
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            errored.add(key)
        elif t.state == TrialState.FAIL:  # killed, interrupted or stale: run it again
            retry.setdefault(key, t.params)
    busy = done | running | tried
    if plan["sampler"] == "grid":  # an errored point is tried again, once per worker process
        return [p for p in grid_points(plan["space"]) if run_name(p) not in busy], len(running)
    # Random/TPE: killed trials first (same point, same folder), then new points up to n_trials.
    again = [p for k, p in retry.items() if k not in busy | errored]
    n_new = n_trials - len(done | errored) - len(running) - len(again)
    return again + [None] * max(0, n_new), len(running)


def _suggest(trial: optuna.Trial, plan: dict) -> dict[str, Any]:
    space = plan["space"]
    if plan["sampler"] == "grid":
        return {k: trial.suggest_categorical(k, v) for k, v in space.items()}
    params = {"batch_size": trial.suggest_categorical("batch_size", space["batch_size"])}
    for k, (lo, hi) in space.items():
        if k != "batch_size":
            params[k] = trial.suggest_float(k, lo, hi, log=k != "aug_strength")
    return params


def _claim(study, plan: dict, point: dict | None, base_sampler, study_dir: Path):
    """A new trial on `point` (None: the sampler's choice), or None when another trial holds
    that point (this one is then marked FAIL with user attr `duplicate`)."""
    if point is None:
        study.sampler = base_sampler
    else:
        with warnings.catch_warnings():  # PartialFixedSampler is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.PartialFixedSampler(point, base_sampler)
    trial = _retry(study.ask)
    key = run_name(_suggest(trial, plan))
    _retry(trial.set_user_attr, "run", key)
    others = [
        t
        for t in _retry(study.get_trials, deepcopy=False)
        if t.number != trial.number
        and t.user_attrs.get("run") == key
        and not t.user_attrs.get("duplicate")
        and (t.state in FINISHED or t.state == TrialState.RUNNING)
    ]
    if not others:
        return trial
    _retry(trial.set_user_attr, "duplicate", True)
    _retry(study.tell, trial, state=TrialState.FAIL)
    _log(study_dir, "duplicate", key, trial.number, f"held by trial {others[0].number}")
    return None


def _score(row: Mapping[str, float], monitor: str) -> float:
    return -row["val_loss"] if monitor == "loss" else row[f"val_{monitor}"]


def history_summary(history: pd.DataFrame, monitor: str = "auc") -> dict[str, Any]:
    """Epochs run, the best epoch by `monitor`, the val metrics there and the total seconds."""
    if history.empty:
        return {"epochs": 0, "best_epoch": 0, "seconds": 0.0, "score": float("nan")}
    scores = [_score(r, monitor) for r in history.to_dict("records")]
    best = history.iloc[int(np.nanargmax(scores))] if np.isfinite(scores).any() else None
    out = {"epochs": len(history), "seconds": float(history["seconds"].sum())}
    out["best_epoch"] = int(best["epoch"]) if best is not None else 0
    out["score"] = float(np.nanmax(scores)) if best is not None else float("nan")
    out.update({m: float(best[m]) if best is not None else float("nan") for m in METRICS})
    return out


def _fit(cfg: Config, callback, progress: bool) -> tuple[dict, Config]:
    """`train.fit`, retried with half the micro-batch when the GPU runs out of memory before
    the first checkpoint (a run with a checkpoint must keep its micro-batch)."""
    while True:
        try:
            return train.fit(cfg, callback=callback, progress=progress), cfg
        except torch.cuda.OutOfMemoryError:
            micro = cfg.micro_batch_size or cfg.batch_size
            if (Path(cfg.out) / "last.pt").exists() or micro == 1:
                raise
            smaller = pick_micro_batch(cfg.batch_size, micro // 2)
            print(f"out of GPU memory with micro-batch {micro}; trying {smaller}")
            torch.cuda.empty_cache()
            cfg = cfg.replace(micro_batch_size=smaller)


def _trial_callback(trial, beat: _Heartbeat, monitor: str, key: str, opts: dict):
    """fit's callback: stop when the trial was taken over, report each epoch, prune."""

    def on_event(event: str, state: dict) -> None:
        if beat.lost:
            raise _Lost(f"trial {trial.number} was taken over by another worker")
        beat.progress += 1  # a step or an epoch: the worker is not hung
        if event == "epoch":
            value = _score(state["metrics"], monitor)
            if math.isfinite(value):
                _retry(trial.report, value, state["epoch"] + 1)
            if opts["prune"] and trial.should_prune():
                raise optuna.TrialPruned()
        if opts["callback"]:
            opts["callback"](event, {**state, "trial": trial.number, "run": key})

    return on_event


def _run_trial(study, trial, plan: dict, base: Config, study_dir: Path, opts: dict) -> str | None:
    """Train the claimed trial's point to the end (resuming its folder) and tell Optuna the
    result. Returns an error line, or None."""
    params = dict(trial.params)
    key = run_name(params)
    run_dir = study_dir / key
    resuming = (run_dir / "last.pt").exists() and (run_dir / "config.json").exists()
    if resuming:  # keep the micro-batch it began with (fit refuses another one)
        micro = Config.load(run_dir / "config.json").micro_batch_size or params["batch_size"]
    else:
        micro = pick_micro_batch(int(params["batch_size"]), opts["max_micro"])
    ref = plan["ref_batch_size"] or 64
    cfg = trial_config(base, params, micro, run_dir, plan["lr_scaling"], ref)
    metrics = run_dir / "metrics.csv"  # written just after last.pt: may lag one epoch behind
    done = len(pd.read_csv(metrics)) if resuming and metrics.exists() else 0
    how = f"epoch {done}/{cfg.epochs}, micro-batch {micro} x {cfg.batch_size // micro}"
    _log(study_dir, "resume" if resuming else "start", key, trial.number, how)
    print(f"\n[{study.study_name}] trial {trial.number}: {key}, lr {cfg.lr:.3g}; {how}")
    _retry(trial.set_user_attr, "run_dir", str(run_dir.resolve()))
    beat = _Heartbeat(trial, opts["heartbeat"]).start()
    on_event = _trial_callback(trial, beat, cfg.monitor, key, opts)
    state, error = None, None
    try:
        summary, cfg = _fit(cfg, on_event, opts["progress"])
        state, history = TrialState.COMPLETE, summary["history"]
    except optuna.TrialPruned:
        state, history = TrialState.PRUNED, pd.read_csv(run_dir / "metrics.csv")
    except _Lost:
        pass
    except KeyboardInterrupt:  # mark it at once, so that a re-run resumes it without waiting
        beat.stop()
        _log(study_dir, "interrupted", key, trial.number)
        _retry(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except Exception as e:  # one point failing (e.g. out of memory) must not end the sweep
        error = f"{key}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    finally:
        beat.stop()
    if beat.lost or (state is None and error is None):
        _log(study_dir, "lost", key, trial.number, "taken over by another worker")
        return None
    if error is None:
        info = history_summary(history, cfg.monitor)
        if state == TrialState.COMPLETE and not math.isfinite(info["score"]):
            error = f"{key}: validation {cfg.monitor} is not finite in any epoch"
    if error is not None:
        _retry(trial.set_user_attr, "error", error)
        _retry(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
        _log(study_dir, "error", key, trial.number, error)
        print(f"trial {trial.number} failed: {error}")
        return error
    _finish(study, trial, state, history, info, cfg, study_dir)
    return None


def _finish(study, trial, state, history: pd.DataFrame, info: dict, cfg: Config, study_dir):
    """Keep the results in the trial (the table and curves need no run folder), then tell."""
    attrs = {k: v for k, v in info.items() if k != "score"}
    attrs.update(lr=cfg.lr, micro_batch_size=cfg.micro_batch_size or cfg.batch_size)
    attrs["history"] = {c: [float(v) for v in history[c]] for c in history.columns}
    for k, v in attrs.items():
        _retry(trial.set_user_attr, k, v)
    if state == TrialState.COMPLETE:
        _retry(study.tell, trial, values=[info["score"]], skip_if_finished=True)
    else:
        _retry(study.tell, trial, state=state, skip_if_finished=True)
    key = run_name(trial.params)
    detail = f"{cfg.monitor} {info['score']:.4f} at epoch {info['best_epoch']}"
    _log(study_dir, state.name.lower(), key, trial.number, detail)
    print(f"[{study.study_name}] {key}: {state.name.lower()}, {detail}")


def _work(study, plan: dict, base: Config, study_dir: Path, base_sampler, opts: dict) -> list:
    """Claim and run points until none is left; returns the errors met (one line each)."""
    rng = random.Random(os.urandom(8))
    watch: dict[int, tuple[Any, float]] = {}
    tried: set[str] = set()  # points that failed with an error in this process
    errors: list[str] = []
    waiting = 0
    while True:
        trials = _retry(study.get_trials, deepcopy=False)
        if _reap_stale(study, trials, watch, opts["grace"], study_dir, opts["progress_timeout"]):
            continue
        todo, running = _todo(trials, plan, opts["n_trials"], tried)
        if not todo:
            if running and opts["wait"]:  # take over any of them whose worker dies
                if running != waiting:
                    print(
                        f"waiting: {running} point(s) running elsewhere; a point whose "
                        f"heartbeat stops for {opts['grace']:g} s is taken over here"
                    )
                waiting = running
                time.sleep(min(opts["heartbeat"], opts["grace"] / 2))
                continue
            return errors
        trial = _claim(study, plan, rng.choice(todo), base_sampler, study_dir)
        if trial is None:  # lost the race for that point: let the other worker go first
            time.sleep(rng.uniform(0.05, 0.5))
            continue
        error = _run_trial(study, trial, plan, base, study_dir, opts)
        if error:
            tried.add(run_name(trial.params))
            errors.append(error)


def sweep(
    cfg: Config,
    batch_sizes: Sequence[int] = ORIGINAL_BATCH_SIZES,
    lrs: Sequence[float] = ORIGINAL_LRS,
    *,
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
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler: expected one of {SAMPLERS}, got {sampler!r}")
    if sampler != "grid" and n_trials < 1:
        raise ValueError(f"--sampler {sampler} needs --n-trials of at least 1")
    if prune and sampler == "grid":
        raise ValueError("pruning is off for the grid: every grid point runs all its epochs")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", study):
        raise ValueError(f"--study {study!r}: use letters, digits, '_', '-' or '.'")
    scaled_lr(1.0, 1, lr_scaling, ref_batch_size)  # validates the rule
    read_index(cfg.cache)  # a missing cache fails here, not once per trial
    sweep_dir = Path(cfg.out)
    study_dir = sweep_dir / study
    study_dir.mkdir(parents=True, exist_ok=True)
    lr_name = "lr" if lr_scaling == "none" else "base_lr"
    space = search_space(sampler, batch_sizes, lrs, lr_name)
    plan = _plan(cfg, sampler, space, lr_scaling, ref_batch_size)
    base_sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler()
    if sampler == "tpe":  # constant liar: workers running at once do not pile onto one point
        startup = min(10, max(2, n_trials // 3))
        base_sampler = optuna.samplers.TPESampler(constant_liar=True, n_startup_trials=startup)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if prune else None
    st = open_storage(storage, sweep_dir)
    opt_study = open_study(st, study, plan, base_sampler, pruner)
    max_micro = max_micro_batch or cfg.micro_batch_size or auto_max_micro_batch(cfg)
    print(
        f"sweep {study!r}: {sampler}, {_masked(storage_url(storage, sweep_dir))}; run folders in "
        f"{study_dir}; micro-batches of at most {max_micro}"
    )
    opts = dict(
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
        write_report(study_dir, table, opt_study, cfg, metric or f"val_{cfg.monitor}")
    if errors:
        raise RuntimeError(
            f"{len(errors)} trial(s) failed, first: {errors[0]} (all in {study_dir / 'sweep.log'})"
        )
    return table


# --- results ----------------------------------------------------------------------------------

TABLE_COLUMNS = ["batch_size", "lr", "epochs", "best_epoch", *METRICS, "seconds"]
TABLE_COLUMNS += ["micro_batch_size", "state", "trial", "run", "run_dir"]


def _finished(study) -> Iterator:
    """The trial that finished each point (first one, by number)."""
    seen = set()
    for t in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number):
        key = t.user_attrs.get("run")
        if key and key not in seen and "best_epoch" in t.user_attrs:
            seen.add(key)
            yield t


def results_table(study) -> pd.DataFrame:
    """One row per finished point: batch size, lr (plus base_lr / weight_decay /
    aug_strength when swept), epochs, best epoch, val metrics at the best epoch, seconds,
    micro-batch, state, trial number, run name and folder. Sorted by batch size, lr."""
    rows = []
    for t in _finished(study):
        ua = t.user_attrs
        row = {"batch_size": int(t.params["batch_size"]), "lr": ua["lr"]}
        row.update(
            {k: t.params[k] for k in ("base_lr", "weight_decay", "aug_strength") if k in t.params}
        )
        row.update({k: ua.get(k) for k in TABLE_COLUMNS if k in ua and k not in row})
        row.update(state=t.state.name.lower(), trial=t.number, run=ua["run"])
        rows.append(row)
    extra = [k for k in ("base_lr", "weight_decay", "aug_strength") if any(k in r for r in rows)]
    cols = TABLE_COLUMNS[:2] + extra + TABLE_COLUMNS[2:]
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values(["batch_size", "lr"], ignore_index=True)


def trial_histories(study) -> dict[str, pd.DataFrame]:
    """Per-epoch history (the run's metrics.csv, kept in the study) of every finished point."""
    return {t.user_attrs["run"]: pd.DataFrame(t.user_attrs["history"]) for t in _finished(study)}


def _best_row(table: pd.DataFrame, metric: str) -> pd.Series:
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the table: {list(table.columns)}")
    ok = table[table[metric].notna()]
    if "state" in ok.columns:
        ok = ok[ok["state"] == "complete"]
    if ok.empty:
        raise ValueError(f"no complete trial with a value for {metric!r}")
    return ok.loc[ok[metric].idxmin() if metric == "val_loss" else ok[metric].idxmax()]


def best_config(table: pd.DataFrame, base: Config, metric: str = "val_auc", out=None) -> Config:
    """The Config of the best complete point by `metric` (val_loss: lowest). Its `out` is that
    trial's run folder (fit finds it finished; evaluate reads it) unless `out` is given."""
    row = _best_row(table, metric)
    cfg = base.replace(
        batch_size=int(row["batch_size"]),
        lr=float(row["lr"]),
        micro_batch_size=int(row["micro_batch_size"]),
        out=str(out or row["run_dir"]),
    )
    if "weight_decay" in row and pd.notna(row["weight_decay"]):
        cfg = cfg.replace(weight_decay=float(row["weight_decay"]))
    if "aug_strength" in row and pd.notna(row["aug_strength"]):
        cfg = with_aug_strength(cfg, float(row["aug_strength"]))
    return cfg


def write_best(
    table: pd.DataFrame, path: str | Path, base: Config, metric: str = "val_auc", out=None
) -> Config:
    """Write `best_config` as JSON (a whole Config, `Config.load` reads it, plus a `tuning`
    record of how it was chosen); returns it. Notebooks 03/04 retrain/evaluate from it."""
    cfg = best_config(table, base, metric, out)
    row = _best_row(table, metric)
    tuning = {"metric": metric, "value": float(row[metric]), "run": row["run"]}
    tuning["trial"] = int(row["trial"])
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**cfg.to_dict(), "tuning": tuning}, indent=2))
    os.replace(tmp, path)
    return cfg


def flatness(table: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """How much `metric` moves along each direction of the grid: for every value of one
    parameter, the range (max - min) of the metric along the other; mean and largest. A flat
    direction has a small range."""
    lr_col = _lr_axis(table)
    grid = table.pivot_table(index="batch_size", columns=lr_col, values=metric, aggfunc="mean")
    along_bs = (grid.max(axis=0) - grid.min(axis=0)).dropna()  # one per lr
    along_lr = (grid.max(axis=1) - grid.min(axis=1)).dropna()  # one per batch size
    rows = [
        ("batch size (lr fixed)", along_bs.mean(), along_bs.max()),
        ("learning rate (batch size fixed)", along_lr.mean(), along_lr.max()),
    ]
    return pd.DataFrame(rows, columns=["direction", f"mean range of {metric}", "largest range"])


def seed_agreement(tables: Mapping[int, pd.DataFrame], metric: str = "val_auc") -> dict:
    """Does a sweep's best point hold over seeds? `tables`: seed -> results table (one sweep of
    the same grid per training seed).

    Returns `points` (one row per grid point: the metric's mean, std and range over seeds),
    `best` (seed -> run name of that seed's best point), `same_best` (one point wins on every
    seed), `spread` (the mean over points of the seed-to-seed range) and `gap` (the best
    point's mean minus the runner-up's). The differences are within noise when the winner
    changes with the seed or `gap` < `spread`.
    """
    if len(tables) < 2:
        raise ValueError(f"need sweeps over at least 2 seeds, got {len(tables)}")
    rows = pd.concat([t.assign(seed=s) for s, t in tables.items()], ignore_index=True)
    rows = rows[rows[metric].notna()]
    points = rows.groupby("run")[metric].agg(["mean", "std", "min", "max", "count"])
    points = points.assign(range=points["max"] - points["min"]).sort_values("mean", ascending=False)
    best = {s: _best_row(t, metric)["run"] for s, t in tables.items()}
    means = points["mean"].to_numpy()
    gap = float(means[0] - means[1]) if len(means) > 1 else float("nan")
    spread = float(points["range"].mean())
    same = len(set(best.values())) == 1
    return {
        "points": points,
        "best": best,
        "same_best": same,
        "gap": gap,
        "spread": spread,
        "within_noise": (not same) or gap < spread,
    }


def seed_verdict(agree: Mapping[str, Any]) -> str:
    """One sentence on a `seed_agreement` result: does the best point hold, or is it noise?"""
    best = ", ".join(f"seed {s}: {r}" for s, r in agree["best"].items())
    if not agree["within_noise"]:
        return (
            f"The best point holds: {best}, ahead of the runner-up by {agree['gap']:.3f}, more "
            f"than the seed-to-seed range of a point ({agree['spread']:.3f})."
        )
    if agree["same_best"]:
        why = f"the best point is the same on every seed ({best}) but leads by {agree['gap']:.3f}"
    else:
        why = f"the best point changes with the seed ({best})"
    return (
        f"The differences are within noise: {why}, while a point's result moves by "
        f"{agree['spread']:.3f} between seeds on average."
    )


def write_report(study_dir: Path, table: pd.DataFrame, study, base: Config, metric: str) -> None:
    """results.csv, best_config.json and the heat map, slices and curves PNGs in `study_dir`."""
    tmp = study_dir / f"results.csv.{os.getpid()}.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, study_dir / "results.csv")
    if (table["state"] == "complete").any() and table[metric].notna().any():
        write_best(table, study_dir / "best_config.json", base, metric)
    shown = dict.fromkeys([metric, "val_accuracy", "val_precision"])  # the study's headline
    figures = {f"heatmap_{m}.png": plot_heatmap(table, m) for m in shown}
    figures[f"slices_{metric}.png"] = plot_slices(table, metric)
    figures["curves.png"] = plot_curves(trial_histories(study))
    for name, fig in figures.items():
        tmp = study_dir / f"{name}.{os.getpid()}.tmp"
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, study_dir / name)


# --- figures ------------------------------------------------------------------------------------


def _lr_axis(table: pd.DataFrame) -> str:
    return "base_lr" if "base_lr" in table.columns and table["base_lr"].notna().any() else "lr"


def _fig_ax(ax, figsize: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _batch_size_axis(ax, sizes, which: str = "x") -> None:
    """Make the `which` ("x"/"y") axis of `ax` a log2 batch-size axis ticked at the batch sizes
    themselves, as plain integers (16, 32, 64; not 2x10^1)."""
    sizes = sorted({int(s) for s in sizes if pd.notna(s)})
    getattr(ax, f"set_{which}scale")("log", base=2)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_ticks(sizes, [str(s) for s in sizes])
    axis.set_minor_locator(NullLocator())


def plot_heatmap(table: pd.DataFrame, metric: str = "val_accuracy", ax=None) -> Figure:
    """Batch size (rows) x learning rate (columns) coloured and labelled by `metric`; a
    scatter on log axes when the lr is not on a grid (random/TPE). Missing cells are blank."""
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the table: {list(table.columns)}")
    lr_col = _lr_axis(table)
    if table[lr_col].nunique() > 12:  # continuous lr: no grid to draw
        fig, ax = _fig_ax(ax, (5.5, 4))
        pts = ax.scatter(table[lr_col], table["batch_size"], c=table[metric], cmap="viridis", s=60)
        ax.set(xscale="log", xlabel=lr_col, ylabel="batch size")
        _batch_size_axis(ax, table["batch_size"], "y")
        fig.colorbar(pts, ax=ax, label=metric)
        ax.set_title(f"{metric} by batch size and {lr_col}")
        return fig
    grid = table.pivot_table(index="batch_size", columns=lr_col, values=metric, aggfunc="mean")
    values = grid.to_numpy(float)
    fig, ax = _fig_ax(ax, (2.2 + 1.2 * values.shape[1], 1.4 + 0.45 * values.shape[0]))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(values.shape[0]), [str(int(v)) for v in grid.index])
    ax.set(xlabel=lr_col, ylabel="batch size", title=f"{metric}")
    finite = values[np.isfinite(values)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="k" if v > mid else "w",
            )
    fig.colorbar(im, ax=ax, label=metric)
    return fig


def plot_slices(table: pd.DataFrame, metric: str = "val_accuracy") -> Figure:
    """`metric` against batch size (one line per lr) and against lr (one line per batch
    size): a flat line is a direction in which the choice does not matter."""
    lr_col = _lr_axis(table)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    for lr, g in table.sort_values("batch_size").groupby(lr_col):
        ax1.plot(g["batch_size"], g[metric], "o-", label=f"{lr_col} {lr:g}")
    for bs, g in table.sort_values(lr_col).groupby("batch_size"):
        ax2.plot(g[lr_col], g[metric], "o-", label=f"batch {bs}")
    ax1.set(xlabel="batch size", ylabel=metric, title=f"{metric} along batch size")
    _batch_size_axis(ax1, table["batch_size"])
    ax2.set(xscale="log", xlabel=lr_col, title=f"{metric} along {lr_col}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _histories(source) -> dict[str, pd.DataFrame]:
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, (str, Path)):  # a study folder: its run folders' metrics.csv
        runs = sorted(Path(source).glob("*/metrics.csv"))
        return {p.parent.name: pd.read_csv(p) for p in runs}
    return trial_histories(source)


def _point_order(name: str) -> tuple[float, float]:
    bs = re.search(r"bs(\d+)", name)
    lr = re.search(r"_b?lr([0-9.e+-]+)", name)
    return (float(bs.group(1)) if bs else math.inf, float(lr.group(1)) if lr else math.inf)


def plot_curves(source, metrics: Sequence[str] = ("train_loss", "val_loss", "val_auc")) -> Figure:
    """Learning curves of all trials on one figure, one panel per metric; colour = batch
    size, line style = lr; markers on every epoch up to 30 (so a one-epoch trial shows as a
    point), integer epoch ticks. `source`: a study, {run: history}, or a study folder."""
    hist = _histories(source)
    names = sorted(hist, key=_point_order)
    sizes = sorted({_point_order(n)[0] for n in names})
    lrs = sorted({_point_order(n)[1] for n in names})
    cmap = matplotlib.colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(4.2 * len(metrics), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for name in names:
        bs, lr = _point_order(name)
        color = cmap(sizes.index(bs) / max(1, len(sizes) - 1) * 0.9)
        for ax, m in zip(axes, metrics, strict=True):
            if m in hist[name]:
                h = hist[name]
                marker = "o" if len(h) <= 30 else None
                ls = styles[lrs.index(lr) % 4]
                ax.plot(h["epoch"], h[m], ls=ls, marker=marker, ms=4, color=color, label=name)
    for ax, m in zip(axes, metrics, strict=True):
        ax.set(xlabel="epoch", title=m)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    if names:
        axes[-1].legend(fontsize=6, ncol=2)
    return fig


# --- learning-rate range test (Smith) ---------------------------------------------------------


def smooth_curve(loss: Sequence[float], window: int | None = None) -> np.ndarray:
    """Centred moving average (no lag, unlike an exponential average); window ~ n/8."""
    loss = pd.Series(np.asarray(loss, float))
    window = window or max(5, len(loss) // 8)
    return loss.rolling(window, center=True, min_periods=1).mean().to_numpy()


def _endless(loader) -> Iterator[dict]:
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def lr_range_test(
    cfg: Config,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
    diverge: float = 4.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Smith's range test: `steps` optimiser steps of `cfg`'s training (batch, accumulation,
    augmentation) with the lr growing geometrically from `start` to `end`, stopping early once
    the loss diverges (above `diverge` x its lowest running average). Writes nothing.
    Returns DataFrame(lr, loss, smoothed), one row per step."""
    if not 0 < start < end or steps < 3:
        raise ValueError(
            f"lr range test: need 0 < start < end and steps >= 3, got {start}, {end}, {steps}"
        )
    device = runtime.resolve_device(cfg.device)
    train.seed_everything(cfg.seed)
    index, stats = read_index(cfg.cache), read_stats(cfg.cache)
    idx = index[index.split == "train"].reset_index(drop=True)
    micro = cfg.micro_batch_size or cfg.batch_size
    if cfg.batch_size % micro:
        raise ValueError(f"batch size {cfg.batch_size} is not a multiple of micro-batch {micro}")
    cuda = device.type == "cuda"
    policy = AugmentPolicy.from_config(cfg)
    gpu_warp = runtime.warp_on_device(device, gpu_augment=cfg.gpu_augment)
    loader = make_loader(
        cfg.cache,
        idx,
        batch_size=micro,
        out_size=cfg.image_size,
        policy=policy,
        train=True,
        seed=cfg.seed,
        workers=cfg.workers,
        warp_in_worker=not gpu_warp,
        balanced=cfg.balanced_sampling,
        pin_memory=cuda,
    )
    model = build_model(cfg.model, cfg.mode, cfg.weights).to(device)
    channels_last = cfg.channels_last and cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = train.make_optimizer(trainable_parameters(model), cfg.replace(lr=start))
    dtype = runtime.amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    pos = float(idx.target.mean())
    pw = cfg.pos_weight or (1.0 if cfg.balanced_sampling else (1 - pos) / max(pos, 1e-9))
    pw = torch.tensor([pw], device=device)
    batches, rows, avg, lowest = _endless(loader), [], None, math.inf
    for lr in progress_bar(
        np.geomspace(start, end, steps), desc="lr range test", disable=not progress
    ):
        for g in opt.param_groups:
            g["lr"] = float(lr)
        micro_batches = [next(batches) for _ in range(cfg.batch_size // micro)]
        n = sum(len(b["target"]) for b in micro_batches)
        pairs = (
            (
                runtime.to_device_batch(
                    b,
                    device,
                    size=cfg.image_size,
                    policy=policy,
                    stats=stats,
                    train=True,
                    seed=cfg.seed,
                    channels_last=channels_last,
                ),
                b["target"].to(device),
            )
            for b in micro_batches
        )
        opt.zero_grad(set_to_none=True)
        loss = train.accumulate_gradients(model, pairs, n, pw, scaler, dtype) / n
        scaler.step(opt)
        scaler.update()
        rows.append({"lr": float(lr), "loss": loss})
        avg = loss if avg is None else 0.9 * avg + 0.1 * loss  # online, only to stop early
        lowest = min(lowest, avg)
        if not math.isfinite(loss) or avg > diverge * lowest:
            break
    df = pd.DataFrame(rows)
    df["smoothed"] = smooth_curve(df["loss"], max(5, steps // 8))
    return df


def suggest_lr(df: pd.DataFrame) -> float:
    """The lr where the smoothed loss falls fastest against log(lr), looking only at the
    part before its minimum (before divergence) and away from the ends, where the centred
    average sees half a window. Start sweeps and schedules around it."""
    lr, s = df["lr"].to_numpy(float), df["smoothed"].to_numpy(float)
    ok = np.isfinite(s) & np.isfinite(lr) & (lr > 0)
    lr, s = lr[ok], s[ok]
    if len(s) < 5:
        raise ValueError("lr range test: need at least 5 finite points to suggest a learning rate")
    edge = max(1, len(s) // 16)  # half the default smoothing window
    i_min = int(np.argmin(s[: len(s) - edge]))
    if i_min <= edge + 1:  # the loss only rises: even the smallest lr tried is too large
        return float(lr[0])
    slope = np.gradient(s[: i_min + 1], np.log10(lr[: i_min + 1]))
    return float(lr[edge + int(np.argmin(slope[edge:]))])


def plot_lr_range(df: pd.DataFrame, suggestion: float | None = None, ax=None) -> Figure:
    """Loss (raw and smoothed) against the learning rate, log x, with the suggested lr."""
    fig, ax = _fig_ax(ax, (6, 3.8))
    ax.plot(df["lr"], df["loss"], color="0.75", lw=1, label="loss per step")
    ax.plot(df["lr"], df["smoothed"], color="C0", lw=2, label="smoothed")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", ls="--", label=f"suggested lr {suggestion:.2g}")
    low, high = np.nanmin(df["smoothed"]), np.nanmax(df["smoothed"][: max(3, len(df) // 2)])
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.5 * (high - low + 1e-9))
    ax.set(
        xscale="log", xlabel="learning rate", ylabel="train loss", title="learning-rate range test"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# --- command line -------------------------------------------------------------------------------


def _parse_list(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"{flag}: expected comma-separated {kind.__name__}s, got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"{flag}: no values in {text!r}")
    return values


def tune_cli(args, cfg: Config) -> None:
    """`python -m pneumolib tune`: the sweep into `cfg.out` (the --out folder); prints the table."""
    table = sweep(
        cfg,
        _parse_list(args.batch_sizes, int, "--batch-sizes"),
        _parse_list(args.lrs, float, "--lrs"),
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
        # --progress-timeout, where the command line offers it
        progress_timeout=args.progress_timeout or PROGRESS_TIMEOUT_S,
    )
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(table.drop(columns=["run_dir"]).to_string(index=False))
    print(f"results: {Path(cfg.out) / args.study}")
