"""The box detector: a 1-channel model that trains and predicts, the classifier's backbone moved
into it, boxes moved with the augmented images, and a run folder that resumes exactly."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pneumolib.base.config import Config, demo_config
from pneumolib.base.errors import RunError, UsageError
from pneumolib.cli import main
from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.models import build_model
from pneumolib.detect.batches import box_targets, detector_input, to_cache_pixels
from pneumolib.detect.loop import fit_detector
from pneumolib.detect.model import MAX_BOXES, box_label, build_detector, load_detector
from pneumolib.train.loop import fit


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _detector(**kw):
    return build_detector(**({"image_size": 64, "mean": 0.4, "std": 0.25} | kw))


def _targets(boxes: list[list[list[float]]]) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.full((len(b),), box_label(), dtype=torch.int64),
        }
        for b in boxes
    ]


def test_detector_takes_one_channel_and_runs_in_train_and_eval_mode():
    torch.manual_seed(0)
    model = _detector(weights="none", mode="scratch")
    assert model.backbone.body.conv1.in_channels == 1
    t = model.transform  # no resize, the cache's normalisation
    assert (t.min_size, t.max_size, t.image_mean, t.image_std) == ((64,), 64, [0.4], [0.25])
    x = torch.rand(2, 1, 64, 64)
    model.train()
    losses = model(x, _targets([[[10.0, 12.0, 40.0, 50.0]], []]))  # a positive and a negative
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1:] == (4,) and len(det["boxes"]) <= MAX_BOXES
        assert len(det["scores"]) == len(det["boxes"])


def test_a_classifier_checkpoint_gives_the_detector_its_backbone(tmp_path):
    torch.manual_seed(1)
    classifier = build_model("resnet18", "scratch", "none")
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh init gives
        classifier.net.bn1.running_mean.fill_(0.3)
    run = tmp_path / "classifier_run"
    run.mkdir()
    torch.save({"model": classifier.state_dict(), "epoch": 0}, run / "best.pt")
    state = classifier.state_dict()
    for weights in (str(run / "best.pt"), str(run)):  # the checkpoint, or its run folder
        body = _detector(weights=weights).backbone.body
        assert torch.equal(body.conv1.weight, state["net.conv1.weight"])
        assert torch.equal(body.layer3[1].conv2.weight, state["net.layer3.1.conv2.weight"])
        assert torch.equal(body.bn1.running_mean, state["net.bn1.running_mean"])
    frozen = _detector(weights=str(run), mode="feature-extraction").backbone.body
    assert torch.equal(frozen.layer4[0].bn1.running_var, state["net.layer4.0.bn1.running_var"])
    assert not any(p.requires_grad for p in frozen.parameters())
    other = tmp_path / "resnet34.pt"
    torch.save({"model": build_model("resnet34", "scratch", "none").state_dict()}, other)
    with pytest.raises(UsageError, match="does not fit resnet18"):
        _detector(weights=str(other))


def test_imagenet_without_network_asks_for_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(FileNotFoundError) as err:
        _detector(weights="imagenet")
    assert "\n" not in str(err.value) and "--weights FILE" in str(err.value)


@pytest.mark.parametrize("on_device", [False, True], ids=["cpu-warp", "torch-warp"])
def test_augmentation_moves_the_boxes_with_the_images(on_device):
    """A bright rectangle drawn where the box is: after the random warp, the bright pixels
    fill the moved box (the corners' box of a tilted rectangle, so a little more)."""
    boxes = [[[8.0, 10.0, 20.0, 30.0]], [[30.0, 6.0, 24.0, 16.0]], [[2.0, 40.0, 40.0, 20.0]]]
    images = np.zeros((len(boxes), 64, 64), np.uint8)
    for img, [[x, y, w, h]] in zip(images, boxes, strict=True):
        img[int(y) : int(y + h), int(x) : int(x + w)] = 255
    batch = {"images": torch.from_numpy(images), "epoch": 3, "batch": 1}
    policy = AugmentPolicy(
        rotate_deg=10, translate=0.1, crop_scale_min=0.6, hflip=True, brightness=0, contrast=0
    )
    x, mats = detector_input(
        batch, torch.device("cpu"), size=48, policy=policy, train=True, seed=0, on_device=on_device
    )
    assert x.shape == (3, 1, 48, 48) and not np.allclose(mats[0], mats[1])
    targets = box_targets(boxes, mats, size=48, label=box_label(), device=torch.device("cpu"))
    for img, target in zip(x[:, 0], targets, strict=True):
        ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
        assert len(target["boxes"]) == 1 and len(xs) > 20
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        # every bright pixel centre lies in the moved box (half a pixel for the bilinear edge)
        assert xs.min() + 0.5 >= x1 - 0.5 and xs.max() + 0.5 <= x2 + 0.5
        assert ys.min() + 0.5 >= y1 - 0.5 and ys.max() + 0.5 <= y2 + 0.5
        # and the box is no bigger than the bright region's own box, bar a tilt's corners
        bright = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        assert (x2 - x1) * (y2 - y1) <= 1.5 * float(bright)
    # eval: a resize, and the detector's boxes go back to cache pixels exactly
    _, eval_mats = detector_input(
        batch, torch.device("cpu"), size=48, policy=policy, train=False, seed=0, on_device=False
    )
    moved = box_targets(boxes, eval_mats, size=48, label=0, device=torch.device("cpu"))
    found = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"]))} for t in moved]
    back = to_cache_pixels(found, eval_mats, cache_size=64)
    for (got, scores), want in zip(back, boxes, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert scores.tolist() == [1.0]


def _cfg(cache: Path, out: Path, **kw):
    kw = {
        "cache_size": 64,
        "image_size": 64,
        "batch_size": 8,
        "max_steps_per_epoch": 2,
        "eval_batch_size": 32,
    } | kw
    return demo_config(out.parent, cache=str(cache), out=str(out), workers=0, **kw)


@pytest.mark.slow
def test_detect_command_writes_a_detector_run(demo_cache, tmp_path, capsys):
    out = tmp_path / "det"
    argv = ["detect", "--cache", str(demo_cache), "--out", str(out), "--epochs", "1"]
    argv += ["--weights", "none", "--mode", "scratch", "--image-size", "64", "--workers", "0"]
    argv += ["--batch-size", "8", "--max-steps-per-epoch", "2", "--device", "cpu"]
    assert main(argv) == 0
    assert "rsna_map" in capsys.readouterr().out  # the epoch line
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "detector" and cfg["monitor"] == "rsna_map"
    hist = pd.read_csv(out / "metrics.csv")
    assert len(hist) == 1
    assert {"train_loss", "val_loss", "val_rsna_map", "val_box_threshold", "val_auc"} <= set(hist)
    assert 0.0 <= hist["val_rsna_map"].iloc[0] <= 1.0
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["config"]["kind"] == "detector" and ckpt["epoch"] == 0
    model, loaded, stats = load_detector(out / "best.pt")
    assert not model.training and loaded.kind == "detector" and stats.size == 64
    # the same folder with other settings is refused, in one line
    assert main([*argv, "--lr", "0.5"]) == 2
    assert "other settings" in capsys.readouterr().err
    # commands that take a classifier refuse a detector in one line, not a state-dict error
    assert main(["cam", "--run", str(out), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "detector checkpoint" in err[-1]
    # predict takes the detector's branch: a file that is no image is one line naming it
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(out / "config.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {out / 'config.json'}")
    with pytest.raises(UsageError, match="detect` trains it"):
        fit(Config.load(out / "config.json"), progress=False)
    with pytest.raises(SystemExit):  # `train` has no --kind: the command is the kind
        main(["train", "--kind", "detector", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_resumed_detector_run_equals_the_uninterrupted_one(demo_cache, tmp_path):
    kw = {"epochs": 2, "deterministic": True}
    fit_detector(_cfg(demo_cache, tmp_path / "a", **kw), progress=False)

    def crash(event: str, state: dict) -> None:
        if event == "step" and state["epoch"] == 1 and state["step"] == 0:
            raise KeyboardInterrupt  # mid-epoch 2, after epoch 1's last.pt was written

    with pytest.raises(KeyboardInterrupt):
        fit_detector(_cfg(demo_cache, tmp_path / "b", **kw), callback=crash, progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 0
    fit_detector(_cfg(demo_cache, tmp_path / "b", **kw), progress=False)  # the same call again
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = (pd.read_csv(tmp_path / r / "metrics.csv") for r in "ab")
    cols = ["train_loss", "val_loss", "val_rsna_map", "val_auc"]
    pd.testing.assert_frame_equal(ha[cols], hb[cols])


def test_a_detector_needs_the_pneumonia_boxes(demo_cache, tmp_path):
    with pytest.raises(RunError, match="pneumonia boxes"):
        fit_detector(_cfg(demo_cache, tmp_path / "v", label="view"), progress=False)
