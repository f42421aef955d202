"""Tests for pneumolib.core.tasks and pneumolib.evaluate.multiclass, and a three-class run end to
end: it
trains, evaluates (per-class AUC, confusion, macro-F1), draws Grad-CAM per class, predicts, and
compares with a binary run on the same patients."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from pneumolib.base.config import demo_config
from pneumolib.base.metrics import bootstrap_indices
from pneumolib.cam.maps import BinaryLogitTarget, ClassTarget, class_target
from pneumolib.cam.run import cam_examples
from pneumolib.cli import main as cli_main
from pneumolib.core import tasks
from pneumolib.core.models import build_model, head
from pneumolib.data.cache_check import seal_cache
from pneumolib.data.labels import read_index
from pneumolib.evaluate.compare import compare_runs
from pneumolib.evaluate.multiclass import macro_f1, three_class_metrics
from pneumolib.evaluate.run import evaluate_run, read_predictions
from pneumolib.predict import predict_files
from pneumolib.train.loop import fit


# --- the rules ------------------------------------------------------------------------
def test_head_width_and_task_round_trip():
    assert tasks.n_outputs("binary") == 1 and tasks.n_outputs("three-class") == 3
    assert tasks.task_of(1).name == "binary" and tasks.task_of(3).name == "three-class"
    with pytest.raises(tasks.TaskError, match="unknown task 'multi'"):
        tasks.task_spec("multi")
    with pytest.raises(tasks.TaskError, match="2 outputs"):
        tasks.task_of(2)


@pytest.mark.parametrize("name", tasks.TASKS)
def test_every_task_in_the_table_is_consistent(name):
    """One row per task: the head width names its outputs, the pneumonia score is the last
    probability, the targets that mean pneumonia are the last output, the loss is BCE for one
    logit and cross-entropy for several, and a built head has the width."""
    t = tasks.task_spec(name)
    assert t.name == name and tasks.task_of(t.n_outputs) is t
    assert t.n_outputs == len(t.outputs) and t.pneumonia_target == max(1, t.n_outputs - 1)
    assert t.outputs[-1] in ("pneumonia", "Lung Opacity")
    assert len(t.prob_columns) in (0, t.n_outputs) and t.needs_classes == bool(t.prob_columns)
    torch.manual_seed(0)
    logits = torch.randn(6, t.n_outputs)
    probs = tasks.probabilities(logits)
    if t.n_outputs == 1:
        y = torch.randint(0, 2, (6,))
        want = F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
        assert torch.allclose(probs[:, -1], torch.sigmoid(logits[:, 0]))
    else:
        y = torch.randint(0, t.n_outputs, (6,))
        want = F.cross_entropy(logits, y)
        assert torch.allclose(probs[:, -1], torch.softmax(logits, 1)[:, -1])
    assert torch.allclose(t.loss_fn(logits, y, None, "mean"), want)
    assert torch.allclose(tasks.pneumonia_probability(logits), probs[:, -1])
    assert t.is_pneumonia(np.array([t.pneumonia_target, 0])).tolist() == [1, 0]
    assert build_model("resnet18", "scratch", "none", n_outputs=t.n_outputs)(
        torch.zeros(2, 1, 32, 32)
    ).shape == (2, t.n_outputs)
    assert tasks.task_of_columns(["prob", *t.prob_columns]) is t


def test_class_codes_follow_the_logit_order_and_refuse_missing_classes():
    codes = tasks.class_codes(["Lung Opacity", "Normal", "No Lung Opacity / Not Normal"])
    assert codes.tolist() == [2, 0, 1]
    assert tasks.THREE_CLASSES[-1] == "Lung Opacity"  # the pneumonia class is last
    with pytest.raises(tasks.TaskError, match=r"X/index.csv: 1 of 2 patients have no RSNA class"):
        tasks.class_codes(["Normal", ""], where="X/index.csv")
    assert tasks.task_spec("three-class").is_pneumonia(np.array([0, 1, 2, 2])).tolist() == [
        0,
        0,
        1,
        1,
    ]


def test_pneumonia_probability_is_sigmoid_or_the_lung_opacity_softmax():
    one = torch.tensor([[0.0], [2.0]])
    np.testing.assert_allclose(tasks.pneumonia_probability(one), torch.sigmoid(one[:, 0]))
    three = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]])
    np.testing.assert_allclose(
        tasks.pneumonia_probability(three), torch.softmax(three, 1)[:, 2], rtol=1e-6
    )
    np.testing.assert_allclose(tasks.probabilities(three).sum(1), [1.0, 1.0], rtol=1e-6)


def test_loss_is_bce_or_cross_entropy_with_the_weights():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 1), torch.randint(0, 2, (8,))
    w = torch.tensor([3.0])
    want = F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=w)
    assert torch.allclose(tasks.loss(logits, y, w), want)
    logits3, y3, w3 = torch.randn(8, 3), torch.randint(0, 3, (8,)), torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(tasks.loss(logits3, y3, w3), F.cross_entropy(logits3, y3, weight=w3))


def test_class_weights_balance_the_total_weight_per_class():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    three, binary = tasks.task_spec("three-class"), tasks.task_spec("binary")
    w = three.class_weights(y)
    totals = np.bincount(y) * np.array(w)
    np.testing.assert_allclose(totals, totals[0])  # every class carries the same total
    assert three.class_weights(y, balanced=True) == [1.0, 1.0, 1.0]
    assert binary.class_weights(np.array([0, 0, 0, 1])) == [3.0]
    assert binary.class_weights(np.array([0, 1]), pos_weight=2.0) == [2.0]
    with pytest.raises(tasks.TaskError, match="--pos-weight is for the binary task"):
        three.class_weights(y, pos_weight=2.0)


def test_balanced_sampling_draws_every_class_equally():
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    w = tasks.sampling_weights(y)
    share = np.bincount(y, weights=w / w.sum())
    np.testing.assert_allclose(share, [1 / 3] * 3)


def test_a_binary_weights_file_seeds_a_three_class_model_but_its_head(tmp_path):
    binary = build_model("resnet18", "scratch", "none")
    torch.save(binary.state_dict(), tmp_path / "b.pt")
    three = build_model("resnet18", "finetune", str(tmp_path / "b.pt"), n_outputs=3)
    assert head(three).out_features == 3
    stem = "net.conv1.weight"
    assert torch.equal(three.state_dict()[stem], binary.state_dict()[stem])


def test_class_targets_pick_a_logit_and_refuse_a_binary_head():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert class_target("normal")(logits).item() == 1.0
    assert class_target("pneumonia")(logits).item() == 3.0  # the last logit in both tasks
    assert BinaryLogitTarget()(torch.tensor([[5.0]])).item() == 5.0
    with pytest.raises(ValueError, match="needs a three-class run"):
        ClassTarget(0)(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="unknown target"):
        class_target("opacity")


# --- the metrics ----------------------------------------------------------------------
def _three_class_sample(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.0
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_three_class_point_metrics_match_scikit_learn():
    y, p = _three_class_sample()
    m = three_class_metrics(y, p, n_boot=0)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert np.array_equal(m["confusion"], confusion_matrix(y, p.argmax(1)))
    for k, name in enumerate(tasks.THREE_CLASSES):
        assert m["auc_ovr"][name] == pytest.approx(roc_auc_score(y == k, p[:, k]))
    assert m["n_per_class"] == dict(zip(tasks.THREE_CLASSES, np.bincount(y).tolist(), strict=True))


def test_three_class_intervals_match_an_explicit_bootstrap_loop():
    y, p = _three_class_sample(n=150, seed=1)
    m = three_class_metrics(y, p, n_boot=200, seed=3)
    idx = bootstrap_indices(len(y), 200, 3)  # the rows the binary metrics resample too
    f1s = [macro_f1(y[i], p[i].argmax(1)) for i in idx]
    np.testing.assert_allclose(m["macro_f1_ci"], np.percentile(f1s, [2.5, 97.5]))
    aucs = [roc_auc_score(y[i] == 0, p[i, 0]) for i in idx]
    np.testing.assert_allclose(m["auc_ovr_ci"]["Normal"], np.percentile(aucs, [2.5, 97.5]))


# --- a three-class run end to end -----------------------------------------------------
@pytest.fixture(scope="module")
def runs(demo_cache: Path, demo_run: Path, tmp_path_factory) -> dict[str, Path]:
    """A binary and a three-class run on the same demo cache, 2 epochs each, evaluated. The
    binary one is a copy of conftest's `demo_run` (the same settings, trained once)."""
    d = tmp_path_factory.mktemp("tasks")
    shutil.copytree(demo_run, d / "binary")
    cfg = demo_config(d, cache=str(demo_cache), out=str(d / "three-class"), workers=0)
    fit(cfg.replace(cache_size=64, image_size=64, epochs=2, task="three-class"), progress=False)
    out = {}
    for task in tasks.TASKS:
        for split in ("val", "test"):
            evaluate_run(d / task, split, n_boot=50, device="cpu", workers=0, figures=False)
        out[task] = d / task
    return out


@pytest.mark.slow
def test_three_class_run_evaluates_with_per_class_metrics(runs, demo_cache):
    run = runs["three-class"]
    pred = read_predictions(run, "test")
    cols = list(tasks.task_spec("three-class").prob_columns)
    np.testing.assert_allclose(pred[cols].sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pred["prob"], pred["prob_lung_opacity"])
    index = read_index(demo_cache).set_index("patientId")
    assert (pred["class"].to_numpy() == index.loc[pred.patientId, "class"].to_numpy()).all()
    m = json.loads((run / "metrics_test.json").read_text())
    assert m["task"] == "three-class" and m["roc_auc"] is not None  # binary metrics too
    y = tasks.class_codes(pred["class"])
    assert (
        m["three_class"]["confusion"]
        == confusion_matrix(y, pred[cols].to_numpy().argmax(1), labels=[0, 1, 2]).tolist()
    )
    assert m["roc_auc"] == pytest.approx(roc_auc_score(pred["target"], pred["prob"]))
    binary = json.loads((runs["binary"] / "metrics_test.json").read_text())
    assert binary["task"] == "binary" and "three_class" not in binary


@pytest.mark.slow
def test_three_class_grad_cam_per_class_and_predict(runs, demo_cache, demo_raw):
    run = runs["three-class"]
    pred = read_predictions(run, "val").head(4)
    ids = pred["patientId"].tolist()
    maps = {
        t: cam_examples(run, ids, method="gradcam", target=t)
        for t in ("pneumonia", "normal", "lung_opacity")
    }
    assert np.allclose(maps["pneumonia"]["maps"], maps["lung_opacity"]["maps"])
    assert not np.allclose(maps["normal"]["maps"], maps["lung_opacity"]["maps"])
    np.testing.assert_allclose(maps["normal"]["probs"], pred["prob_raw"], atol=1e-5)
    with pytest.raises(ValueError, match="needs a three-class run"):
        cam_examples(runs["binary"], ids, method="gradcam", target="normal")
    files = [demo_raw / "stage_2_train_images" / f"{p}.dcm" for p in ids]
    df, errors = predict_files(run / "best.pt", files, device="cpu")
    assert errors == []
    np.testing.assert_allclose(df["probability"], pred["prob"], atol=1e-5)  # calibrated
    np.testing.assert_allclose(df["probability_raw"], pred["prob_raw"], atol=1e-5)


@pytest.mark.slow
def test_binary_and_three_class_runs_compare_on_the_same_patients(runs, capsys):
    result = compare_runs([runs["binary"], runs["three-class"]], "test", n_boot=100)
    assert len(result["pairs"]) == 1
    assert result["runs"]["n"].iloc[0] == len(read_predictions(runs["binary"], "test"))
    code = cli_main(["compare", "--run", str(runs["binary"]), "--run", str(runs["three-class"])])
    assert code == 0 and "three-class" in capsys.readouterr().out


def test_three_class_needs_rsna_classes(demo_cache, tmp_path):
    index = pd.read_csv(demo_cache / "index.csv", dtype=str)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "images.npy").symlink_to(demo_cache / "images.npy")
    shutil.copy(demo_cache / "stats.json", cache / "stats.json")
    index.assign(**{"class": ""}).to_csv(cache / "index.csv", index=False)
    seal_cache(cache)  # edited on purpose: record the edit
    cfg = demo_config(tmp_path, cache=str(cache), out=str(tmp_path / "run"), workers=0)
    cfg = cfg.replace(cache_size=64, image_size=64, epochs=1, task="three-class")
    with pytest.raises(tasks.TaskError, match="have no RSNA class"):
        fit(cfg, progress=False)
