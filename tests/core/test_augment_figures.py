"""pneumolib.core.augment_figures (notebook 02) and the shared class colours (core.plots)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pneumolib.base import plots
from pneumolib.core import augment_figures as figures
from pneumolib.core.augment import AugmentPolicy, augment_batch_cpu, sample_params, to_model_input
from pneumolib.data.labels import open_images, read_index


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
    from pneumolib.base.metrics import CLASS_NAMES

    assert plots.class_colour(1) == plots.class_colour("positive") == "tab:red"
    assert plots.class_colour(CLASS_NAMES[1]) == plots.class_colour("Lung Opacity")
    assert plots.class_colour(np.int64(0)) == plots.class_colour(CLASS_NAMES[0])
    assert plots.class_colour("Normal") != plots.class_colour("No Lung Opacity / Not Normal")
    assert plots.class_colour("something else") == plots.CLASS_COLOURS["unknown"]


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
    assert res["max"] <= 0.5 + 1e-3  # one warp: the CPU path only rounds to whole grey levels
    assert res["frac_over_1"] == 0.0
    assert res["device"] == "cpu" and res["cpu"].shape == res["torch"].shape == (8, 56, 56)
    fig = figures.compare_warps(res, index=1)
    assert len(fig.axes) == 4  # CPU path, torch path, difference, colour bar
    assert "on cpu" in fig.axes[1].get_title() and "GPU" not in fig.axes[1].get_title()
    # the title quotes the numbers warp_agreement returned: same input, one computation
    assert f"max {res['max']:.2f}, mean {res['mean']:.3f}" in fig._suptitle.get_text()


# --- training ----------------------------------------------------------------------------
