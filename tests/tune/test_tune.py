"""The sweep engine: exactly-once grid with two workers, crash recovery, accumulation to an
effective batch of 1,024, the results table and figures, and the learning-rate range test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from tiny_config import TINY

from pneumolib import tune
from pneumolib.base.config import Config
from pneumolib.base.owner import TakenOver, check_owner, claim_run
from pneumolib.data.cache_check import seal_cache
from pneumolib.train import loop as train
from pneumolib.train import setup as train_setup
from pneumolib.tune import claims
from pneumolib.tune.claims import Heartbeat, claim_point, points_to_claim, reap_stale
from pneumolib.tune.engine import SweepOptions, _run_trial, _trial_callback
from pneumolib.tune.plan import Plan, make_plan

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(cache: Path, out: Path, **changes) -> Config:
    return Config(cache=str(cache), out=str(out), **{**TINY, **changes})


def env(threads: int = 0) -> dict[str, str]:
    extra = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def trials_by_run(storage: str, study: str) -> dict[str, list]:
    s = optuna.load_study(study_name=study, storage=storage)
    out: dict[str, list] = {}
    for t in s.get_trials(deepcopy=False):
        if not t.user_attrs.get("duplicate"):
            out.setdefault(t.user_attrs.get("run"), []).append(t)
    return out


# --- small pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bs, cap, micro", [(1024, 64, 64), (96, 64, 48), (100, 64, 50), (16, 64, 16), (7, 4, 1)]
)
def test_pick_micro_batch_is_largest_divisor_under_cap(bs, cap, micro):
    assert tune.pick_micro_batch(bs, cap) == micro


def test_lr_scaling_rules_and_trial_config(tmp_path):
    assert tune.scaled_lr(1e-4, 256, "linear", 64) == pytest.approx(4e-4)
    assert tune.scaled_lr(1e-4, 256, "sqrt", 64) == pytest.approx(2e-4)
    assert tune.scaled_lr(1e-4, 256, "none", 64) == 1e-4
    with pytest.raises(ValueError, match="lr scaling"):
        tune.scaled_lr(1e-4, 256, "cubic")
    base = Config(rotate_deg=5.0, brightness=0.1)
    cfg = tune.trial_config(
        base, {"batch_size": 256, "base_lr": 1e-4}, micro=64, out=tmp_path, lr_scaling="linear"
    )
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.out) == (256, 64, str(tmp_path))
    assert cfg.lr == pytest.approx(4e-4)
    cfg = tune.trial_config(
        base, {"batch_size": 32, "lr": 2e-4, "aug_strength": 0.0}, micro=32, out=tmp_path
    )
    assert (cfg.lr, cfg.rotate_deg, cfg.brightness, cfg.crop_scale_min) == (2e-4, 0.0, 0.0, 1.0)
    assert tune.run_name({"batch_size": 64, "lr": 1e-4}) == "bs64_lr0.0001"


def test_storage_urls(tmp_path, monkeypatch):
    url = tune.storage_url(None, tmp_path / "sweep")
    assert url == f"sqlite:///{(tmp_path / 'sweep' / 'study.db').resolve()}"
    assert tune.storage_url(str(tmp_path / "s.journal"), tmp_path).endswith("s.journal")
    assert isinstance(
        tune.open_storage(str(tmp_path / "j.log"), tmp_path), optuna.storages.JournalStorage
    )
    with pytest.raises(ValueError, match="--storage"):
        tune.storage_url("study.txt", tmp_path)
    monkeypatch.setattr("pneumolib.tune.storage.random.uniform", lambda a, b: 0.0)  # no waits
    with pytest.raises(ValueError, match="cannot open|no PostgreSQL driver") as err:  # no server
        tune.open_storage("postgresql://me:secret@127.0.0.1:9/db", tmp_path)
    assert "secret" not in str(err.value) and "postgresql://me:***@127.0.0.1:9/db" in str(err.value)


def grid_study(folder: Path, batch_sizes: list[int], cfg: Config | None = None):
    """(study, plan): a grid of `batch_sizes` x lr 1e-3 in a new SQLite study in `folder`."""
    space = tune.search_space("grid", batch_sizes, [1e-3])
    plan = make_plan(cfg or Config(), "grid", space=space, lr_scaling="none", ref_batch_size=64)
    return tune.open_study(tune.open_storage(None, folder), "grid", plan=plan), plan


def test_the_plan_is_stored_as_the_dict_it_always_was(tmp_path: Path) -> None:
    space = tune.search_space("grid", [4, 8], [1e-3])
    plan = make_plan(Config(), "grid", space=space, lr_scaling="linear", ref_batch_size=32)
    d = plan.to_dict()
    assert list(d) == ["sampler", "space", "lr_scaling", "config", "ref_batch_size"]
    assert d["space"] == {"batch_size": [4, 8], "lr": [1e-3]} and d["ref_batch_size"] == 32
    assert Plan.from_dict(d) == plan
    study = tune.open_study(tune.open_storage(None, tmp_path), "grid", plan=plan)
    assert study.user_attrs["plan"] == d


def claim(study, plan: Plan, point: dict | None, folder: Path):
    """One worker's claim on `point` (None: a new point of the sampler's choice)."""
    rnd = optuna.samplers.RandomSampler()
    return claim_point(study, plan, point=point, sampler=rnd, study_dir=folder)


def test_a_second_claim_on_a_held_point_backs_off(tmp_path):
    point = {"batch_size": 4, "lr": 1e-3}
    study, plan = grid_study(tmp_path, [4, 8])
    first = claim(study, plan, point, tmp_path)
    assert first is not None and first.params == point
    assert claim(study, plan, point, tmp_path) is None  # held by a running trial
    todo, running = points_to_claim(study.get_trials(), plan, 0, set())
    assert todo == [{"batch_size": 8, "lr": 1e-3}] and running == 1
    study.tell(first, 0.5)
    assert claim(study, plan, point, tmp_path) is None  # held by a complete trial
    states = [(t.state, t.user_attrs.get("duplicate", False)) for t in study.get_trials()]
    assert states == [(TrialState.COMPLETE, False), *[(TrialState.FAIL, True)] * 2]
    with pytest.raises(ValueError, match="other settings"):
        grid_study(tmp_path, [4, 8], Config(epochs=3))


class FakeClock:
    """time.monotonic for the stale-trial reaper, moved on by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hung_worker_with_a_fresh_heartbeat_is_reaped_for_no_progress(tmp_path, monkeypatch):
    point = {"batch_size": 4, "lr": 1e-3}
    study, plan = grid_study(tmp_path, [4])
    hung = claim(study, plan, point, tmp_path)
    old = claim(study, plan, None, tmp_path)
    assert old is None  # a duplicate: only `hung` runs; an older worker is simulated below
    clock, watch = FakeClock(), {}
    monkeypatch.setattr(claims.time, "monotonic", clock)  # the clock the reaper reads

    def reap_at(t: float, progress: int | None) -> bool:
        clock.now = t
        hung.set_user_attr("heartbeat", t)  # the worker's thread is alive: always fresh
        if progress is not None:
            hung.set_user_attr("progress", progress)
        trials = study.get_trials()
        return reap_stale(
            study, trials, watch=watch, grace=60.0, study_dir=tmp_path, progress_timeout=100.0
        )

    assert not reap_at(0, 5)  # first sighting
    assert not reap_at(50, 5) and not reap_at(90, 6)  # a step at 90: the timer starts again
    assert not reap_at(150, 6)  # 60 s without progress: under the timeout
    assert reap_at(195, 6)  # 105 s without a step or epoch, heartbeat fresh: hung
    assert study.get_trials()[0].state == TrialState.FAIL
    log = tune.sweep_log(tmp_path)
    stale = log[log.event == "stale"]
    assert len(stale) == 1 and stale.detail.iloc[0].startswith("no progress")
    todo, running = points_to_claim(study.get_trials(), plan, 0, set())
    assert todo == [point] and running == 0  # re-queued: claimed again, resumes its folder


def test_liveness_and_progress_are_judged_apart(tmp_path, monkeypatch):
    study, plan = grid_study(tmp_path, [4, 8])
    legacy = claim(study, plan, {"batch_size": 4, "lr": 1e-3}, tmp_path)
    dead = claim(study, plan, {"batch_size": 8, "lr": 1e-3}, tmp_path)
    dead.set_user_attr("heartbeat", 1.0)
    dead.set_user_attr("progress", 3)
    clock, watch = FakeClock(), {}
    monkeypatch.setattr(claims.time, "monotonic", clock)  # the clock the reaper reads

    def reap_at(t: float, progress_timeout: float) -> bool:
        clock.now = t
        legacy.set_user_attr("heartbeat", t)  # no `progress` attr: a worker without counts
        trials = study.get_trials()
        return reap_stale(
            study, trials, watch=watch, grace=60.0, study_dir=tmp_path,
            progress_timeout=progress_timeout,
        )  # fmt: skip

    assert not reap_at(0, 1000) and not reap_at(30, 1000)
    assert reap_at(61, 1000)  # `dead`: its heartbeat stopped, whatever the progress timeout
    assert tune.sweep_log(tmp_path).detail.tolist()[-1] == "no heartbeat for 60 s"
    assert not any(reap_at(t, 10) for t in (100, 200, 300))  # `legacy` is alive: never stale
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {legacy.number: TrialState.RUNNING, dead.number: TrialState.FAIL}


def test_heartbeat_writes_the_step_count_the_callback_makes(tmp_path):
    study = optuna.create_study()
    trial = study.ask()
    beat = Heartbeat(trial, 0.01).start()
    on_event = _trial_callback(trial, beat, "auc", "bs4", SweepOptions(max_micro=4))
    for step in range(3):
        on_event("step", {"epoch": 0, "step": step})
    deadline = time.time() + 5
    while study.trials[0].user_attrs.get("progress") != 3 and time.time() < deadline:
        time.sleep(0.01)
    beat.stop()
    assert study.trials[0].user_attrs["progress"] == 3
    assert tune.PROGRESS_TIMEOUT_S >= 600  # minutes: validation or compile is not a hang


def test_a_taken_over_trial_ends_quietly_in_the_old_worker(tmp_path, monkeypatch, capsys):
    """The old worker's fit meets another worker's marker at its next write: the trial is
    neither an error nor told again; the sweep log says `lost` and one line says why."""
    point = {"batch_size": 4, "lr": 1e-3}
    study, plan = grid_study(tmp_path, [4])
    trial = claim(study, plan, point, tmp_path)
    taken: list[str] = []

    def woken_fit(cfg, *, callback, progress, owner):  # hung, then woken at its next write
        taken.append(claim_run(cfg.out, trial=trial.number + 1))  # the worker that took over
        check_owner(cfg.out, owner)  # what fit does before each epoch's files
        raise AssertionError("wrote into a folder it no longer owns")

    monkeypatch.setattr(train, "fit", woken_fit)
    base = tiny_config(tmp_path / "cache", tmp_path)
    opts = SweepOptions(max_micro=4, heartbeat=60.0, progress=False)
    assert _run_trial(study, trial, plan, base, tmp_path, opts) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith(f"was taken over by {taken[0]}; this worker stops")
    assert f"trial {trial.number} on " in out[-1]
    log = tune.sweep_log(tmp_path)
    assert log.event.tolist() == ["start", "lost"]
    frozen = study.get_trials()[0]
    assert "error" not in frozen.user_attrs and frozen.state == TrialState.RUNNING  # not told
    assert sorted(p.name for p in (tmp_path / "bs4_lr0.001").iterdir()) == ["owner.json"]


@pytest.mark.slow
def test_a_taken_over_runs_old_worker_writes_nothing_more(demo_cache, tmp_path):
    """Two workers on one run folder: the first is taken over in its 2nd epoch; its write at the
    end of that epoch is refused and leaves the folder as the takeover found it; the second
    resumes the folder to the end."""
    run = tmp_path / "run"
    cfg = tiny_config(demo_cache, run, epochs=2, batch_size=4)
    first = claim_run(run, trial=0)
    seen: dict[str, object] = {}

    def take_over(event: str, state: dict) -> None:
        if event == "step" and state["epoch"] == 1 and "second" not in seen:
            seen["second"] = claim_run(run, trial=1)  # reaped as hung, claimed elsewhere
            seen["files"] = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    with pytest.raises(TakenOver, match="this worker stops"):
        train.fit(cfg, callback=take_over, progress=False, owner=first)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == seen["files"]  # nothing the first worker would have written appears
    assert pd.read_csv(run / "metrics.csv").epoch.tolist() == [1]
    second = seen["second"]
    assert isinstance(second, str)
    train.fit(cfg, progress=False, owner=second)  # the worker that took over: resumes, ends
    assert pd.read_csv(run / "metrics.csv").epoch.tolist() == [1, 2]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from pneumolib.cli import main

    assert main(["tune", "--cache", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 2
    assert "no cache index" in capsys.readouterr().err
    assert main(["tune", "--cache", "c", "--out", "s", "--batch-sizes", "16,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


# --- the learning-rate range test ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggest_lr_lies_in_descending_part_of_synthetic_curve(seed):
    lr = np.geomspace(1e-7, 1.0, 100)
    x = np.log10(lr)
    # flat until ~1e-5, falls to a minimum near 1e-2, then diverges
    clean = 0.7 - 0.5 / (1 + np.exp(-(x + 3.5) / 0.35)) + 3.0 * np.clip(x + 1.5, 0, None) ** 2
    loss = clean + np.random.default_rng(seed).normal(0, 0.02, len(lr))
    df = pd.DataFrame({"lr": lr, "loss": loss, "smoothed": tune.smooth_curve(loss)})
    s = tune.suggest_lr(df)
    descending = lr[: int(np.argmin(clean)) + 1][
        np.diff(clean[: int(np.argmin(clean)) + 2]) < -1e-3
    ]
    assert descending.min() <= s <= descending.max()
    assert 10**-4.5 < s < 10**-2.5  # near the middle of the fall, not at its flat ends


@pytest.mark.slow
def test_lr_range_test_on_demo_cache(demo_cache, tmp_path):
    cfg = tiny_config(demo_cache, tmp_path / "unused", batch_size=8)
    df = tune.lr_range_test(cfg, start=1e-5, end=10.0, steps=12, progress=False)
    assert list(df.columns) == ["lr", "loss", "smoothed"]
    assert 3 <= len(df) <= 12 and df["lr"].is_monotonic_increasing
    assert df["lr"].iloc[0] == pytest.approx(1e-5) and np.isfinite(df["smoothed"]).all()
    s = tune.suggest_lr(df)
    assert 1e-5 <= s <= 10.0
    fig = tune.plot_lr_range(df, s)
    assert any(abs(line.get_xdata()[0] - s) < 1e-12 for line in fig.axes[0].lines[2:])
    assert not (tmp_path / "unused").exists()  # the range test writes nothing


# --- accumulation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_cache(demo_cache, tmp_path_factory) -> Path:
    """The demo cache with its images repeated: > 1,024 train rows, the same val rows."""
    out = tmp_path_factory.mktemp("big") / "cache"
    out.mkdir()
    images = np.load(demo_cache / "images.npy")
    index = pd.read_csv(demo_cache / "index.csv", dtype={"patientId": str})
    reps = 20
    np.save(out / "images.npy", np.concatenate([images] * reps))
    copies = []
    for r in range(reps):
        c = index.copy()
        c["row"] += r * len(images)
        c["patientId"] = c["patientId"] + f"-{r}"
        if r:
            c["split"] = "train"
        copies.append(c)
    pd.concat(copies).to_csv(out / "index.csv", index=False)
    (out / "stats.json").write_text((demo_cache / "stats.json").read_text())
    seal_cache(out)  # built by hand: record its own files
    return out


@pytest.mark.slow
def test_effective_batch_1024_accumulates_micro_batches_on_cpu(big_cache, tmp_path, monkeypatch):
    steps = []
    real = train_setup.accumulate_gradients  # where fit's optimiser step calls it

    def counting(net, pairs, **kwargs):
        pairs = list(pairs)
        steps.append((kwargs["n_step"], [len(y) for _, y in pairs]))
        return real(net, pairs, **kwargs)

    monkeypatch.setattr(train_setup, "accumulate_gradients", counting)
    cfg = tiny_config(big_cache, tmp_path / "sweep", max_steps_per_epoch=1)
    table = tune.sweep(cfg, batch_sizes=[1024], lrs=[1e-3], max_micro_batch=64, progress=False)
    assert steps == [(1024, [64] * 16)]  # one optimiser step over 1,024 images in 16 pieces
    assert table.loc[0, ["batch_size", "micro_batch_size"]].tolist() == [1024, 64]
    saved = Config.load(tmp_path / "sweep" / "grid" / "bs1024_lr0.001" / "config.json")
    assert (saved.batch_size, saved.micro_batch_size) == (1024, 64)


# --- one in-process sweep: table, figures, best config, re-run ---------------------------------


@pytest.fixture(scope="module")
def small_sweep(demo_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "sweep"
    cfg = tiny_config(demo_cache, out)
    table = tune.sweep(cfg, batch_sizes=[4, 8], lrs=[1e-3, 3e-3], max_micro_batch=4, progress=False)
    return cfg, table, out


@pytest.mark.slow
def test_table_has_one_row_per_grid_point(small_sweep):
    cfg, table, out = small_sweep
    assert sorted(zip(table.batch_size, table.lr, strict=True)) == [
        (4, 1e-3),
        (4, 3e-3),
        (8, 1e-3),
        (8, 3e-3),
    ]
    assert (table.state == "complete").all() and (table.epochs == 1).all()
    assert (table.best_epoch == 1).all() and table.micro_batch_size.tolist() == [4, 4, 4, 4]
    for m in ("val_auc", "val_accuracy", "val_precision", "val_recall"):
        assert table[m].between(0, 1).all(), m
    assert (table.seconds > 0).all()
    saved = pd.read_csv(out / "grid" / "results.csv")
    assert len(saved) == 4 and set(saved.run) == set(table.run)
    for name in ("heatmap_val_auc.png", "heatmap_val_precision.png", "curves.png"):
        assert (out / "grid" / name).stat().st_size > 1000


@pytest.mark.slow
def test_heatmap_and_curves_show_every_point(small_sweep):
    cfg, table, out = small_sweep
    fig = tune.plot_heatmap(table, "val_accuracy")
    cells = fig.axes[0].images[0].get_array()
    assert cells.shape == (2, 2) and not np.ma.getmaskarray(cells).any()
    expected = table.pivot_table(index="batch_size", columns="lr", values="val_accuracy")
    np.testing.assert_allclose(np.asarray(cells), expected.to_numpy())
    assert len(fig.axes[0].texts) == 4
    study = tune.load_sweep(out)
    curves = tune.plot_curves(study)
    assert [len(ax.lines) for ax in curves.axes] == [4, 4, 4]
    assert len(tune.plot_curves(out / "grid").axes[0].lines) == 4  # from the run folders too
    flat = tune.flatness(table, "val_accuracy")
    assert len(flat) == 2 and (flat.iloc[:, 1] >= 0).all()


def test_one_epoch_curves_draw_markers_on_integer_epoch_ticks():
    one = pd.DataFrame({"epoch": [1], "train_loss": [0.7], "val_loss": [0.6], "val_auc": [0.8]})
    fig = tune.plot_curves({"bs16_lr0.001": one, "bs32_lr0.001": one.assign(val_auc=0.7)})
    for ax in fig.axes:
        assert [ln.get_marker() for ln in ax.lines] == ["o", "o"]  # a single point shows
        fig.draw_without_rendering()
        assert all(float(t).is_integer() for t in ax.get_xticks())


def test_batch_size_axis_is_log2_with_the_batch_sizes_as_plain_labels():
    table = pd.DataFrame({"batch_size": [16, 32, 64] * 2, "lr": [1e-3] * 3 + [3e-3] * 3}).assign(
        val_accuracy=np.linspace(0.6, 0.8, 6)
    )
    fig = tune.plot_slices(table, "val_accuracy")
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "32", "64"]
    assert not ax.xaxis.get_minorticklocs().size  # no 2x10^1, 3x10^1 minor labels
    many = pd.DataFrame({"batch_size": [16, 32, 64] * 5, "lr": np.geomspace(1e-4, 1e-2, 15)})
    scatter = tune.plot_heatmap(many.assign(val_accuracy=0.7), "val_accuracy").axes[0]
    assert [t.get_text() for t in scatter.get_yticklabels()] == ["16", "32", "64"]


@pytest.mark.slow
def test_write_best_gives_a_loadable_config_of_the_best_point(small_sweep, tmp_path):
    cfg, table, out = small_sweep
    best = table.loc[table.val_auc.idxmax()]
    written = tune.write_best(table, tmp_path / "best.json", base=cfg, metric="val_auc")
    loaded = Config.load(tmp_path / "best.json")
    assert loaded == written
    assert (loaded.batch_size, loaded.lr, loaded.out) == (best.batch_size, best.lr, best.run_dir)
    assert json.loads((tmp_path / "best.json").read_text())["tuning"]["run"] == best.run
    assert Config.load(out / "grid" / "best_config.json").batch_size == best.batch_size


@pytest.mark.slow
def test_rerun_does_not_train_again_and_other_settings_are_refused(small_sweep, monkeypatch):
    cfg, table, out = small_sweep

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(train, "fit", no_training)
    again = tune.sweep(cfg, batch_sizes=[4, 8], lrs=[1e-3, 3e-3], max_micro_batch=4, progress=False)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="other settings.*epochs"):
        tune.sweep(cfg.replace(epochs=2), batch_sizes=[4, 8], lrs=[1e-3, 3e-3], progress=False)
    with pytest.raises(ValueError, match="pruning is off for the grid"):
        tune.sweep(cfg, batch_sizes=[4], lrs=[1e-3], prune=True, study="other", progress=False)


@pytest.mark.slow
def test_random_search_on_journal_storage(demo_cache, tmp_path):
    cfg = tiny_config(demo_cache, tmp_path / "sweep")
    journal = str(tmp_path / "sweep" / "study.log")
    table = tune.sweep(
        cfg,
        batch_sizes=[4, 8],
        lrs=[1e-4, 1e-2],
        storage=journal,
        study="rnd",
        sampler="random",
        n_trials=2,
        progress=False,
    )
    assert len(table) == 2 and {"weight_decay", "aug_strength"} <= set(table.columns)
    assert table.lr.between(1e-4, 1e-2).all() and table.aug_strength.between(0, 2).all()
    row = table.iloc[0]
    saved = Config.load(Path(row.run_dir) / "config.json")
    assert saved.weight_decay == pytest.approx(row.weight_decay)
    assert saved.rotate_deg == pytest.approx(cfg.rotate_deg * row.aug_strength)
    assert tune.plot_heatmap(table, "val_auc").axes  # a scatter for a non-grid table


@pytest.mark.slow
def test_lr_scaling_sweep_is_its_own_study_with_scaled_lrs(demo_cache, tmp_path):
    cfg = tiny_config(demo_cache, tmp_path / "sweep")
    table = tune.sweep(
        cfg,
        batch_sizes=[4, 16],
        lrs=[1e-3],
        study="grid_sqrt",
        lr_scaling="sqrt",
        ref_batch_size=4,
        max_micro_batch=8,
        progress=False,
    )
    assert table.base_lr.tolist() == [1e-3, 1e-3]
    np.testing.assert_allclose(table.lr, [1e-3, 2e-3])  # sqrt(16 / 4) = 2
    assert table.run.tolist() == ["bs4_blr0.001", "bs16_blr0.001"]
    assert Config.load(tmp_path / "sweep" / "grid_sqrt" / "bs16_blr0.001" / "config.json").lr == (
        pytest.approx(2e-3)
    )


# --- several workers and crashes (subprocesses) ---------------------------------------------


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_each_point_once(demo_cache, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "pneumolib", "tune", "--cache", str(demo_cache), "--out", str(out)]
    cmd += ["--batch-sizes", "4,8,16", "--lrs", "1e-3,2e-3", "--max-micro-batch", "8"]
    for k, v in TINY.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    procs = [
        subprocess.Popen(
            cmd, env=env(threads=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    runs = trials_by_run(f"sqlite:///{out / 'study.db'}", "grid")
    grid = {f"bs{b}_lr{lr}" for b in (4, 8, 16) for lr in ("0.001", "0.002")}
    assert set(runs) == grid
    for run, trials in runs.items():  # each point: one trial, complete
        assert [t.state for t in trials] == [TrialState.COMPLETE], run
    events = tune.sweep_log(out / "grid")
    starts = events[events.event.isin(["start", "resume"])]
    assert sorted(starts.run) == sorted(grid)  # trained once each, by one worker or the other
    for run in grid:
        assert pd.read_csv(out / "grid" / run / "metrics.csv").epoch.tolist() == [1]
    table = pd.read_csv(out / "grid" / "results.csv")
    assert len(table) == 6 and set(table.run) == grid
    fig = tune.plot_heatmap(table, "val_auc")
    assert fig.axes[0].images[0].get_array().shape == (3, 2) and len(fig.axes[0].texts) == 6


WORKER = """
import sys, time
from pathlib import Path
from pneumolib.base.config import Config
from pneumolib.tune import sweep

cache, out, block = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "block"
seen = []

def callback(event, state):  # the second point blocks after its first epoch, to be killed
    if block and event == "epoch":
        if state["run"] not in seen:
            seen.append(state["run"])
        if len(seen) == 2:
            (out / "blocked").write_text(state["run"])
            time.sleep(600)

cfg = Config(cache=cache, out=str(out), **TINY)
sweep(cfg, batch_sizes=[4, 8, 16], lrs=[1e-3], max_micro_batch=8, heartbeat=0.3, grace=1.5,
      callback=callback, progress=False)
"""


@pytest.mark.slow
def test_killed_worker_resumes_without_redoing_finished_points(demo_cache, tmp_path):
    out = tmp_path / "sweep"
    script = tmp_path / "worker.py"
    script.write_text(f"TINY = {dict(TINY, epochs=3)!r}\n" + textwrap.dedent(WORKER))
    first = subprocess.Popen(
        [sys.executable, str(script), str(demo_cache), str(out), "block"], env=env()
    )
    deadline = time.time() + 180
    while not (out / "blocked").exists():
        assert first.poll() is None and time.time() < deadline, "worker ended before blocking"
        time.sleep(0.1)
    killed = (out / "blocked").read_text()
    first.send_signal(signal.SIGKILL)
    first.wait()
    grid_dir = out / "grid"
    before = tune.sweep_log(grid_dir)
    done = set(before.run[before.event == "complete"])
    assert len(done) == 1 and killed not in done
    mtimes = {r: (grid_dir / r / "metrics.csv").stat().st_mtime_ns for r in done}
    epoch1 = pd.read_csv(grid_dir / killed / "metrics.csv")
    assert epoch1.epoch.tolist() == [1] and (grid_dir / killed / "last.pt").exists()
    storage = f"sqlite:///{out / 'study.db'}"
    assert [t.state for t in trials_by_run(storage, "grid")[killed]] == [TrialState.RUNNING]

    second = subprocess.run(
        [sys.executable, str(script), str(demo_cache), str(out), "go"],
        env=env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    runs = trials_by_run(storage, "grid")
    assert len(runs) == 3
    for run, trials in runs.items():  # exactly one COMPLETE per point
        assert [t.state for t in trials].count(TrialState.COMPLETE) == 1, run
    assert [t.state for t in runs[killed]] == [TrialState.FAIL, TrialState.COMPLETE]
    after = tune.sweep_log(grid_dir)
    new = after.iloc[len(before) :]
    assert not set(new.run[new.event.isin(["start", "resume"])]) & done  # finished: not redone
    assert {r: (grid_dir / r / "metrics.csv").stat().st_mtime_ns for r in done} == mtimes
    resumed = new[(new.event == "resume") & (new.run == killed)]
    assert len(resumed) == 1 and resumed.detail.iloc[0].startswith("epoch 1/3")
    assert (new.event == "stale").sum() == 1
    metrics = pd.read_csv(grid_dir / killed / "metrics.csv")
    assert metrics.epoch.tolist() == [1, 2, 3]  # continued after epoch 1, not from scratch
    assert metrics.train_loss.iloc[0] == epoch1.train_loss.iloc[0]


def _seed_table(values: dict[str, float]) -> pd.DataFrame:
    rows = [
        {"batch_size": int(r[2:4]), "lr": 1e-3, "val_auc": v, "state": "complete", "run": r}
        for r, v in values.items()
    ]
    return pd.DataFrame(rows)


def test_seed_agreement_tells_a_result_that_holds_from_noise():
    from pneumolib.tune import seed_agreement

    holds = {s: _seed_table({"bs16": 0.90 + 0.01 * s, "bs64": 0.70 + 0.01 * s}) for s in range(3)}
    a = seed_agreement(holds)
    assert a["same_best"] and not a["within_noise"]
    assert a["best"] == {0: "bs16", 1: "bs16", 2: "bs16"}
    assert a["gap"] == pytest.approx(0.2) and a["spread"] == pytest.approx(0.02)
    assert list(a["points"].index) == ["bs16", "bs64"]

    flips = {0: _seed_table({"bs16": 0.8, "bs64": 0.7}), 1: _seed_table({"bs16": 0.7, "bs64": 0.8})}
    b = seed_agreement(flips)
    assert not b["same_best"] and b["within_noise"] and b["best"] == {0: "bs16", 1: "bs64"}

    close = {s: _seed_table({"bs16": 0.80 + 0.05 * s, "bs64": 0.79 + 0.05 * s}) for s in range(3)}
    c = seed_agreement(close)  # same winner, but its lead (0.01) is below the spread (0.1)
    assert c["same_best"] and c["within_noise"]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_agreement({0: holds[0]})

    from pneumolib.tune import seed_verdict

    assert seed_verdict(a).startswith("The best point holds: seed 0: bs16")
    assert "changes with the seed" in seed_verdict(b) and "within noise" in seed_verdict(b)
    assert "leads by 0.010" in seed_verdict(c) and "within noise" in seed_verdict(c)
