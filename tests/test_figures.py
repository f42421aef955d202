"""Figures for notebooks 02 and 03: augmentation panels, training curves, the run table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from pneumolib import figures
from pneumolib.augment import AugmentPolicy, augment_batch_cpu, sample_params, to_model_input
from pneumolib.config import demo_config
from pneumolib.data import open_images, read_index
from pneumolib.train import fit


def _image(size: int = 48) -> np.ndarray:
    """A uint8 (S, S) gradient with a bright square: asymmetric, so warps are visible."""
    yy, xx = np.mgrid[:size, :size]
    img = (xx * 3 + yy).astype(np.float64)
    img[10:20, 25:35] = 400
    return (img / img.max() * 255).astype(np.uint8)


BOX = [[25.0, 10.0, 10.0, 10.0]]


# --- augmentation ------------------------------------------------------------------------


def test_single_transforms_switch_on_one_parameter_each():
    policy = AugmentPolicy(rotate_deg=7, translate=0.1, crop_scale_min=0.5, hflip=True)
    singles = figures.single_transforms(policy)
    assert list(singles) == ["tilt", "translation", "scale", "crop", "intensity", "flip"]
    ident = dataclasses.asdict(AugmentPolicy.identity())
    changed = {
        name: {k for k, v in dataclasses.asdict(p).items() if v != ident[k]}
        for name, p in singles.items()
    }
    assert changed["tilt"] == {"rotate_deg"}
    assert changed["translation"] == {"translate"}
    assert changed["scale"] == {"scale_min", "scale_max"}
    assert changed["crop"] == {"crop_scale_min", "crop_ratio_min", "crop_ratio_max"}
    assert changed["intensity"] == {"brightness", "contrast"}
    assert changed["flip"] == {"hflip"}
    # A tilt-only draw leaves scale, shift and crop at the identity.
    params = sample_params(8, in_size=48, policy=singles["tilt"], rng=np.random.default_rng(0))
    assert np.all(params["scale"] == 1) and np.all(params["shift"] == 0)
    assert np.abs(params["angle"]).max() > 1
    np.testing.assert_allclose(params["crop"], np.tile([0, 0, 48, 48], (8, 1)))
    assert "flip" not in figures.single_transforms(AugmentPolicy())


def test_augment_samples_match_the_trainers_batch_function():
    img, policy = _image(), AugmentPolicy()
    res = figures.augment_samples(
        img, BOX, policy=policy, out_size=40, rng=np.random.default_rng(5), n=3
    )
    ref = augment_batch_cpu(
        np.repeat(img[None], 3, 0),
        out_size=40,
        policy=policy,
        rng=np.random.default_rng(5),
        train=True,
    )
    np.testing.assert_array_equal(res["mats"], ref["mats"])
    want = to_model_input(
        torch.from_numpy(ref["images"]), gain=ref["gain"], bias=ref["bias"], mean=0.0, std=1.0
    )
    np.testing.assert_allclose(res["images"], want[:, 0].numpy())
    assert res["images"].shape == (3, 40, 40)
    assert 0.0 <= res["images"].min() and res["images"].max() <= 1.0
    assert len(res["boxes"]) == 3 and res["boxes"][0] != BOX  # moved and rescaled
    # Eval: plain resize 48 -> 24 halves the box, deterministic.
    ev = figures.augment_samples(img, BOX, policy=policy, out_size=24, rng=None, n=1)
    np.testing.assert_allclose(ev["boxes"][0], [[12.5, 5.0, 5.0, 5.0]])
    assert ev["params"] is None


def test_augment_samples_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        figures.augment_samples(
            np.zeros((4, 5), np.uint8), [], policy=AugmentPolicy(), out_size=8, rng=None, n=1
        )


def test_show_transforms_one_row_per_transform_plus_full_policy(tmp_path):
    fig = figures.show_transforms(_image(), BOX, policy=AugmentPolicy(), out_size=32, seed=1, n=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6 * 4  # 5 transforms + full policy, eval + 3 draws
    # The eval column and the intensity row (no geometry) always show the box.
    assert all(len(fig.axes[4 * r].patches) == 1 for r in range(6))
    assert all(len(ax.patches) == 1 for ax in fig.axes[4 * 4 : 4 * 5])
    assert fig.axes[4 * 4].get_ylabel() == "intensity"
    assert [fig.axes[4 * r].get_ylabel() for r in range(6)][-1] == "full policy"
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    flip = figures.show_transforms(
        _image(), BOX, policy=AugmentPolicy(hflip=True), out_size=32, n=2
    )
    assert len(flip.axes) == 7 * 3
    full = fig.axes[4 * 5 + 1].get_title()  # the full policy names every drawn parameter
    assert all(word in full for word in ("°", "×", "crop", "shift", "contrast", "bright"))


def test_class_colour_is_one_mapping_for_names_targets_and_metrics_names():
    from pneumolib.metrics import CLASS_NAMES

    assert figures.class_colour(1) == figures.class_colour("positive") == "tab:red"
    assert figures.class_colour(CLASS_NAMES[1]) == figures.class_colour("Lung Opacity")
    assert figures.class_colour(np.int64(0)) == figures.class_colour(CLASS_NAMES[0])
    assert figures.class_colour("Normal") != figures.class_colour("No Lung Opacity / Not Normal")
    assert figures.class_colour("something else") == figures.CLASS_COLOURS["unknown"]


def test_show_policy_grid_two_rows_and_checks_boxes(demo_cache, tmp_path):
    index, images = read_index(demo_cache), open_images(demo_cache)
    pos = index[index.target == 1].head(4)
    fig = figures.show_policy_grid(
        images[pos.row.to_numpy()], list(pos.boxes), policy=AugmentPolicy(), out_size=48
    )
    assert len(fig.axes) == 2 * 4
    assert sum(len(ax.patches) for ax in fig.axes[:4]) == sum(len(b) for b in pos.boxes)
    fig.savefig(tmp_path / "g.png")
    assert (tmp_path / "g.png").exists()
    with pytest.raises(ValueError, match="one box list per image"):
        figures.show_policy_grid(
            images[pos.row.to_numpy()], [[]], policy=AugmentPolicy(), out_size=48
        )


def test_cpu_and_torch_warps_agree_to_rounding(demo_cache):
    images = np.asarray(open_images(demo_cache)[:8])
    res = figures.warp_agreement(images, policy=AugmentPolicy(), out_size=56, seed=3)
    assert res["same_matrices"]
    assert res["max"] <= 0.51  # cv2 rounds to whole grey levels; nothing else differs
    assert res["frac_over_1"] == 0.0
    assert res["device"] == "cpu" and res["cpu"].shape == res["torch"].shape == (8, 56, 56)
    fig = figures.compare_warps(res, index=1)
    assert len(fig.axes) == 4  # cv2, grid_sample, difference, colour bar
    assert "on cpu" in fig.axes[1].get_title() and "GPU" not in fig.axes[1].get_title()
    # the title quotes the numbers warp_agreement returned: same input, one computation
    assert f"max {res['max']:.2f}, mean {res['mean']:.3f}" in fig._suptitle.get_text()


# --- training ----------------------------------------------------------------------------


def _write_run(folder: Path, rows: list[dict], monitor: str = "auc", **cfg) -> Path:
    folder.mkdir(parents=True)
    base = {"epoch": 0, "train_loss": 1.0, "val_loss": 1.0, "val_auc": 0.5, "val_accuracy": 0.5}
    base |= {"val_precision": 0.5, "val_recall": 0.5, "lr": 1e-3, "seconds": 30.0}
    df = pd.DataFrame([base | {"epoch": i + 1} | r for i, r in enumerate(rows)])
    df.to_csv(folder / "metrics.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"monitor": monitor, "mode": "scratch"} | cfg))
    return folder


def test_best_epoch_index_replays_the_trainers_rule():
    nan = float("nan")
    df = pd.DataFrame(
        {
            "val_auc": [0.7, nan, 0.9, 0.9, 0.9, 0.8],
            "val_loss": [0.5, 0.1, 0.6, 0.4, 0.4, 0.2],
        }
    )
    assert figures.best_epoch_index(df) == 3  # AUC tie -> lower val loss; full tie -> earlier
    assert figures.best_epoch_index(df, "loss") == 1  # lowest val loss, whatever its AUC
    assert figures.best_epoch_index(df.assign(val_auc=nan)) is None


def test_compare_runs_picks_the_best_epoch_like_the_trainer(tmp_path):
    nan = float("nan")
    a = _write_run(
        tmp_path / "a",
        [
            {"val_auc": 0.7},
            {"val_auc": nan, "val_loss": 0.1},
            {"val_auc": 0.9, "val_loss": 0.8},
            {"val_auc": 0.9, "val_loss": 0.5, "val_recall": 0.8},
            {"val_auc": 0.9, "val_loss": 0.5},
        ],
        weights="/somewhere/runs/scratch/best.pt",
    )
    b = _write_run(
        tmp_path / "b",
        [{"val_loss": 0.5, "val_auc": 0.99}, {"val_loss": 0.3, "val_auc": 0.6}],
        monitor="loss",
        weights="imagenet",
    )
    c = _write_run(tmp_path / "c", [{"val_auc": nan}])
    table = figures.compare_runs([a, b, c])
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["a", "best_epoch"] == 4  # AUC tie -> lower val loss -> earlier; NaN skipped
    assert table.loc["a", "val_recall"] == pytest.approx(0.8)
    assert table.loc["a", "weights"] == "scratch/best.pt"
    assert table.loc["a", "minutes"] == pytest.approx(5 * 30 / 60)
    assert table.loc["b", "best_epoch"] == 2  # monitor "loss": lowest val_loss
    assert table.loc["b", "val_auc"] == pytest.approx(0.6)
    assert pd.isna(table.loc["c", "best_epoch"]) and pd.isna(table.loc["c", "val_auc"])
    named = figures.compare_runs({"first": a})
    assert list(named.index) == ["first"]


def test_compare_runs_and_plot_history_name_a_missing_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        figures.compare_runs([tmp_path])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        figures.plot_history({"x": tmp_path})
    with pytest.raises(ValueError, match="at least one run"):
        figures.plot_history({})


def test_plot_history_two_axes_one_curve_set_per_run(tmp_path):
    rows = [{"val_auc": 0.6}, {"val_auc": 0.8}, {"val_auc": 0.8, "val_loss": 0.2}]
    a = _write_run(tmp_path / "a", rows)
    df = pd.read_csv(a / "metrics.csv").assign(val_loss=[0.1, 0.3, 0.9])
    fig = figures.plot_history({"a": a, "b": df})
    assert len(fig.axes) == 2
    ax_loss, ax_auc = fig.axes
    assert len(ax_loss.lines) == 2 * 2  # train + val per run
    assert ax_loss.get_yscale() == "log" and "log" in ax_loss.get_ylabel()  # spikes don't flatten
    assert len(ax_auc.lines) == 2 * 2  # curve + best-epoch star per run
    star_a, star_b = ax_auc.lines[1], ax_auc.lines[3]
    assert list(star_a.get_xdata()) == [3]  # the AUC tie goes to the lower val loss
    assert list(star_b.get_xdata()) == [2] and list(star_b.get_ydata()) == [0.8]
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


@pytest.mark.slow
def test_compare_runs_agrees_with_best_pt_of_a_real_run(demo_cache, tmp_path):
    cfg = demo_config(
        tmp_path,
        cache=str(demo_cache),
        out=str(tmp_path / "run"),
        cache_size=64,
        image_size=48,
        epochs=2,
        batch_size=16,
        max_steps_per_epoch=2,
        monitor="loss",  # finite every epoch even on the tiny val split
    )
    fit(cfg, progress=False)
    table = figures.compare_runs([tmp_path / "run"])
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert table.loc["run", "best_epoch"] == best["epoch"] + 1
    assert table.loc["run", "val_loss"] == pytest.approx(best["metrics"]["val_loss"])
    assert table.loc["run", "epochs"] == 2 and table.loc["run", "mode"] == "scratch"
