"""Exactly once with several workers: claiming a point, heartbeats, and taking over the points
of workers that died or hung. The study is the shared record (see `pneumolib.tune`)."""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pneumolib.tune.plan import Plan, grid_points, run_name
from pneumolib.tune.storage import log_event, retry

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Seconds a running trial may go without a new step or epoch before it counts as hung. A step
# takes well under a second on a GPU (a full RSNA epoch a few minutes) and at most a minute or
# two on a CPU at batch 1,024; the longest silent stretches (validation, torch.compile, a
# checkpoint on Drive) take minutes. 30 minutes is far above them all, yet frees a hung GPU.
PROGRESS_TIMEOUT_S = 1800.0


class Heartbeat:
    """Writes the time into the trial every `interval` s from a thread, and `progress` (steps
    and epochs counted by the training callback) when it changed; `lost` turns True when the
    trial is no longer RUNNING (another worker declared it dead)."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval, self.lost = trial, interval, False
        self.progress, self._written = 0, -1  # only a count: the callback never waits on the db
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Heartbeat:
        """Start beating (in a daemon thread); returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and wait for the thread to end."""
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


def _stale_reason(
    t: FrozenTrial, watch: dict, now: float, grace: float, progress_timeout: float
) -> str | None:
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


def reap_stale(
    study: optuna.Study,
    trials: Iterable[FrozenTrial],
    *,
    watch: dict,
    grace: float,
    study_dir: Path,
    progress_timeout: float = math.inf,
) -> bool:
    """Mark FAIL the running trials whose heartbeat this worker has seen unchanged for
    `grace` seconds, or their progress for `progress_timeout`; True when it marked one.
    `watch` is this worker's memory of what it saw, kept between calls."""
    now, reaped, running = time.monotonic(), False, set()
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        running.add(t.number)
        why = _stale_reason(t, watch, now, grace, progress_timeout)
        if why is not None:
            retry(study.tell, t.number, state=TrialState.FAIL, skip_if_finished=True)
            run = t.user_attrs.get("run", "-")
            log_event(study_dir, "stale", run=run, trial=t.number, detail=why)
            print(f"trial {t.number} ({run}): {why}, taking it over")
            reaped = True
    for n in set(watch) - running:
        del watch[n]
    return reaped


def points_to_claim(
    trials: Iterable[FrozenTrial], plan: Plan, n_trials: int, tried: set[str]
) -> tuple[list, int]:
    """(points to claim, number of points running elsewhere). A point is a parameter dict;
    None stands for a new random/TPE point. `tried`: points that errored in this process."""
    done: set[str] = set()
    running: set[str] = set()
    errored: set[str] = set()
    again_params: dict[str, dict[str, Any]] = {}
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
            again_params.setdefault(key, t.params)
    busy = done | running | tried
    if plan.sampler == "grid":  # an errored point is tried again, once per worker process
        return [p for p in grid_points(plan.space) if run_name(p) not in busy], len(running)
    # Random/TPE: killed trials first (same point, same folder), then new points up to n_trials.
    again = [p for k, p in again_params.items() if k not in busy | errored]
    n_new = n_trials - len(done | errored) - len(running) - len(again)
    return again + [None] * max(0, n_new), len(running)


def _suggest(trial: optuna.Trial, plan: Plan) -> dict[str, Any]:
    space = plan.space
    if plan.sampler == "grid":
        return {k: trial.suggest_categorical(k, v) for k, v in space.items()}
    params = {"batch_size": trial.suggest_categorical("batch_size", space["batch_size"])}
    for k, (lo, hi) in space.items():
        if k != "batch_size":
            params[k] = trial.suggest_float(k, lo, hi, log=k != "aug_strength")
    return params


def claim_point(
    study: optuna.Study,
    plan: Plan,
    *,
    point: dict | None,
    sampler: optuna.samplers.BaseSampler,
    study_dir: Path,
) -> optuna.Trial | None:
    """A new trial on `point` (None: `sampler`'s choice), or None when another trial holds
    that point (this one is then marked FAIL with user attr `duplicate`)."""
    if point is None:
        study.sampler = sampler
    else:
        with warnings.catch_warnings():  # PartialFixedSampler is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.PartialFixedSampler(point, sampler)
    trial = retry(study.ask)
    key = run_name(_suggest(trial, plan))
    retry(trial.set_user_attr, "run", key)
    others = [
        t
        for t in retry(study.get_trials, deepcopy=False)
        if t.number != trial.number
        and t.user_attrs.get("run") == key
        and not t.user_attrs.get("duplicate")
        and (t.state in FINISHED or t.state == TrialState.RUNNING)
    ]
    if not others:
        return trial
    retry(trial.set_user_attr, "duplicate", value=True)
    retry(study.tell, trial, state=TrialState.FAIL)
    log_event(
        study_dir,
        "duplicate",
        run=key,
        trial=trial.number,
        detail=f"held by trial {others[0].number}",
    )
    return None
