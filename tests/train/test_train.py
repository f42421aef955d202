"""Trainer: learns the demo data, resumes exactly, accumulates exactly, runs under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn

from pneumolib.base.config import demo_config
from pneumolib.base.errors import RunError
from pneumolib.data.preprocess import build_cache
from pneumolib.data.synth import make_demo_data
from pneumolib.train.loop import fit
from pneumolib.train.setup import accumulate_gradients, lr_lambda

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def learn_cache(tmp_path_factory) -> Path:
    """A demo cache big enough to learn from: 400 phantoms, 64 px."""
    d = tmp_path_factory.mktemp("learn")
    raw = make_demo_data(d / "raw", n=400, size=128, seed=3, realism="easy")  # crisp signal
    return build_cache(raw, d / "cache", size=64, workers=2, progress=False)


def _cfg(cache: Path, out: Path, **kw):
    kw = {"cache_size": 64, "image_size": 64} | kw
    return demo_config(out.parent, cache=str(cache), out=str(out), workers=0, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_demo_training_reaches_auc_0_9(learn_cache, tmp_path):
    cfg = _cfg(learn_cache, tmp_path / "run", epochs=6)
    summary = fit(cfg, progress=False)
    hist = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(hist) == 6
    assert hist["val_auc"].max() >= 0.9, hist
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert summary["best"] == pytest.approx(hist["val_auc"].max())
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "stats", "rng"} <= set(
        ckpt
    )
    assert ckpt["config"]["epochs"] == 6 and ckpt["stats"]["size"] == 64
    assert json.loads((tmp_path / "run" / "config.json").read_text())["mode"] == "scratch"


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(learn_cache, tmp_path):
    kw = dict(epochs=3, deterministic=True, max_steps_per_epoch=3, batch_size=16)
    fit(_cfg(learn_cache, tmp_path / "a", **kw), progress=False)

    def crash(event: str, state: dict) -> None:
        if event == "step" and state["epoch"] == 1 and state["step"] == 1:
            raise KeyboardInterrupt  # mid-epoch, after last.pt of epoch 0 was written

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(learn_cache, tmp_path / "b", **kw), callback=crash, progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 0
    fit(_cfg(learn_cache, tmp_path / "b", **kw), progress=False)  # the same call again
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(pd.read_csv(tmp_path / "b" / "metrics.csv")) == 3


@pytest.mark.slow
def test_resume_refuses_other_settings(learn_cache, tmp_path):
    kw = dict(epochs=1, max_steps_per_epoch=1)
    fit(_cfg(learn_cache, tmp_path / "r", **kw), progress=False)
    with pytest.raises(RunError, match="other settings"):
        fit(_cfg(learn_cache, tmp_path / "r", lr=0.5, **kw), progress=False)
    with pytest.raises(RunError, match="amp"):  # numbers may change: not resumable
        fit(_cfg(learn_cache, tmp_path / "r", amp=False, **kw), progress=False)
    # paths, exact-speed fields and the stopping rule may change (config.field_names tags)
    fit(_cfg(learn_cache, tmp_path / "r", eval_batch_size=7, patience=3, **kw), progress=False)


def test_accumulation_matches_one_big_batch():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    )
    x, y = torch.randn(16, 1, 12, 12), (torch.rand(16) > 0.5).float()
    pw, scaler = torch.tensor([2.0]), torch.amp.GradScaler("cpu", enabled=False)

    def grads(pairs) -> list[torch.Tensor]:
        net.zero_grad()
        loss = accumulate_gradients(net, pairs, n_step=16, loss_weight=pw, scaler=scaler)
        return [p.grad.clone() for p in net.parameters()], loss

    big, loss_big = grads([(x, y)])
    small, loss_small = grads([(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)])
    for g1, g4 in zip(big, small, strict=True):
        torch.testing.assert_close(g1, g4, rtol=1e-5, atol=1e-7)
    assert loss_small == pytest.approx(loss_big, rel=1e-6)


@pytest.mark.slow
def test_accumulating_trainer_runs(learn_cache, tmp_path):
    cfg = _cfg(
        learn_cache,
        tmp_path / "acc",
        epochs=1,
        batch_size=64,
        micro_batch_size=16,
        max_steps_per_epoch=2,
    )
    fit(cfg, progress=False)
    assert len(pd.read_csv(tmp_path / "acc" / "metrics.csv")) == 1
    with pytest.raises(RunError, match="multiple"):
        fit(_cfg(learn_cache, tmp_path / "bad", batch_size=60, micro_batch_size=16), progress=False)


def test_cosine_warmup_schedule_shape():
    f = lr_lambda("cosine", total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(100) == pytest.approx(0.0, abs=1e-9)
    assert lr_lambda("none", 100, 0)(50) == 1.0


@pytest.mark.slow
def test_feature_extraction_trains_only_the_head(learn_cache, tmp_path):
    cfg = _cfg(
        learn_cache, tmp_path / "fe", epochs=1, mode="feature-extraction", max_steps_per_epoch=2
    )
    fit(cfg, progress=False)
    ck = _weights(tmp_path / "fe" / "last.pt")
    torch.manual_seed(cfg.seed)  # the trainer seeds before building the model
    from pneumolib.core.models import build_model

    init = build_model(cfg.model, cfg.mode, cfg.weights).state_dict()
    changed = {k for k in init if not torch.equal(init[k], ck[k])}
    assert changed and all(k.startswith("net.fc") for k in changed), changed


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_ddp_two_processes_on_cpu(learn_cache, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "pneumolib",
        "train",
        "--cache",
        str(learn_cache),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--cache-size",
        "64",
        "--image-size",
        "64",
        "--mode",
        "scratch",
        "--weights",
        "none",
        "--workers",
        "0",
        "--max-steps-per-epoch",
        "3",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    sums = json.loads((out / "ddp_check.json").read_text())
    assert len(sums) == 2 and sums[0] == sums[1]
    assert len(pd.read_csv(out / "metrics.csv")) == 2  # written once, not once per rank
    assert res.stdout.count("epoch   1/2") == 1
