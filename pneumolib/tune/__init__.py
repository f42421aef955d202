"""Batch-size x learning-rate sweeps on Optuna that survive dropped sessions and share workers.

The original study: batch sizes 16 ... 1024 x learning rates 1e-4 and 2e-4 at a fixed number
of epochs. `sweep(cfg, batch_sizes=..., lrs=...)` runs it (or a random/TPE search that also varies
weight decay and augmentation strength) as one Optuna study kept in a storage given by URL:
an SQLite file (default: SWEEP/study.db), any SQLAlchemy database (PostgreSQL for many
machines) or a journal file (`*.log`, where SQLite locking on a network drive is a problem).
Every trial is a normal run folder SWEEP/<study>/<run> made by `pneumolib.train.loop.fit` and
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

One module per job: `plan` (the points, each point's Config, the micro-batch that fits),
`storage` (the Optuna storage, the study, sweep.log), `claims` (claiming a point, heartbeats,
taking over dead or hung trials), `engine` (the worker loop and `sweep`), `results` (the
table, the best config, seed agreement), `figures`, and `lr_range` (Smith's range test). The
names below are the public ones, loaded on first use: `from pneumolib import tune; tune.sweep(...)`.
"""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.tune.claims": "FINISHED PROGRESS_TIMEOUT_S",
    "pneumolib.tune.engine": "SweepOptions sweep write_report",
    "pneumolib.tune.figures": "plot_curves plot_heatmap plot_slices",
    "pneumolib.tune.lr_range": "lr_range_test plot_lr_range smooth_curve suggest_lr",
    "pneumolib.tune.plan": (
        "AUG_FIELDS AUG_STRENGTH_RANGE CPU_MAX_MICRO LOCAL_FIELDS LR_RULES "
        "ORIGINAL_BATCH_SIZES ORIGINAL_LRS SAMPLERS WEIGHT_DECAY_RANGE auto_max_micro_batch "
        "grid_points pick_micro_batch run_name scaled_lr search_space trial_config "
        "with_aug_strength"
    ),
    "pneumolib.tune.results": (
        "METRICS TABLE_COLUMNS best_config flatness history_summary results_table "
        "seed_agreement seed_verdict trial_histories write_best"
    ),
    "pneumolib.tune.storage": "load_sweep open_storage open_study storage_url sweep_log",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
