"""Tests for pneumolib.cam.maps on deliberately tiny, hand-built or randomly initialised
networks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from pneumolib.cam.localisation import energy_in_box, pointing_game
from pneumolib.cam.maps import (
    BinaryLogitTarget,
    FeatureHook,
    cam,
    cam_weights,
    feature_maps,
    grad_cam,
)

BLOB = [[40.0, 36.0, 16.0, 20.0]]  # [x, y, w, h]: the bright region of `blob_image`


class TinyNet(nn.Module):
    """features: channel 0 = ReLU(x) (bright), channel 1 = ReLU(-x) (dark), pooled 4x down;
    then global average pooling and a linear head with hand-set weights."""

    def __init__(self, head_weights: tuple[float, float] = (1.0, 0.0)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.AvgPool2d(4), nn.BatchNorm2d(2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([head_weights]))
            self.fc.bias.fill_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def blob_image(h: int = 64, w: int = 64) -> torch.Tensor:
    """(1, 1, H, W): dark (-1) background with a bright (+1) rectangle at BLOB."""
    x = -torch.ones(1, 1, h, w)
    bx, by, bw, bh = map(int, BLOB[0])
    x[..., by : by + bh, bx : bx + bw] = 1.0
    return x


def resnet18_1ch() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model.eval()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a.ravel()).corr(pd.Series(b.ravel()), method="spearman"))


def all_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# --- CAM / Grad-CAM behaviour ------------------------------------------------------------


@pytest.mark.parametrize("method", ["cam", "grad_cam"])
@pytest.mark.parametrize(
    ("head_weights", "positive", "in_blob"),
    [
        ((1.0, 0.0), True, True),  # head counts bright pixels: evidence is the blob
        ((0.0, 1.0), True, False),  # head counts dark pixels: evidence is everywhere else
        ((-1.0, 0.0), False, True),  # explain-negative of a head that is against the blob
        ((0.0, -1.0), False, False),
    ],
)
def test_map_peaks_where_the_head_looks(method, head_weights, positive, in_blob):
    model = TinyNet(head_weights)
    fn = cam if method == "cam" else grad_cam
    kwargs = {"linear": model.fc} if method == "cam" else {}
    maps, probs = fn(
        model, blob_image(), layer="features", target=BinaryLogitTarget(positive), **kwargs
    )
    hit = pointing_game(maps, [BLOB])[0]
    energy = energy_in_box(maps, [BLOB])[0]
    assert hit == in_blob
    assert (energy > 0.8) if in_blob else (energy < 0.2)
    assert probs.shape == (1,) and 0 < probs[0] < 1


def test_map_is_zero_when_there_is_no_evidence():
    # The head is against bright pixels; asked for evidence *for* the class, nothing is left.
    model = TinyNet((-1.0, 0.0))
    maps, _ = cam(model, blob_image(), layer="features", linear=model.fc)
    assert torch.count_nonzero(maps) == 0
    assert not pointing_game(maps, [BLOB])[0]


def test_cam_and_grad_cam_agree_on_resnet_last_layer():
    model = resnet18_1ch()
    x = torch.randn(2, 1, 64, 64)
    for positive in (True, False):
        target = BinaryLogitTarget(positive)
        m_cam, p_cam = cam(model, x, layer="layer4", linear=model.fc, target=target)
        m_grad, p_grad = grad_cam(model, x, layer="layer4", target=target)
        torch.testing.assert_close(p_cam, p_grad)
        torch.testing.assert_close(m_cam, m_grad, rtol=1e-4, atol=1e-4)
        if m_cam.max() > 0:
            assert spearman(m_cam.numpy(), m_grad.numpy()) > 0.99


def test_grad_cam_on_an_inner_layer_and_frozen_backbone():
    model = resnet18_1ch()
    for p in model.parameters():
        p.requires_grad_(
            requires_grad=False
        )  # feature-extraction mode: gradients must still reach the map
    maps, _ = grad_cam(model, torch.randn(2, 1, 64, 64), layer="layer3.1.conv2")
    assert maps.shape == (2, 64, 64)
    assert all(p.grad is None for p in model.parameters())
    assert (maps.flatten(1).amax(1) <= 1).all() and maps.min() >= 0


@pytest.mark.parametrize("method", ["cam", "grad_cam"])
def test_maps_range_resolution_and_one_forward_per_batch(method):
    model = resnet18_1ch()
    x = torch.randn(3, 1, 64, 48)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        fn = cam if method == "cam" else grad_cam
        kwargs = {"linear": model.fc} if method == "cam" else {}
        maps, probs = fn(model, x, layer="layer4", **kwargs)
        assert len(calls) == 1
        single, _ = fn(model, x[1:2], layer="layer4", **kwargs)
    finally:
        handle.remove()
    assert maps.shape == (3, 64, 48) and probs.shape == (3,)
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps[1:2], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["cam", "grad_cam"])
def test_hooks_removed_and_modes_restored(method):
    model = TinyNet()
    model.train()
    model.features[3].eval()  # a frozen BatchNorm: its own mode must survive too
    fn = cam if method == "cam" else grad_cam
    kwargs = {"linear": model.fc} if method == "cam" else {}
    fn(model, blob_image(), layer="features", **kwargs)
    assert all_hooks(model) == 0
    assert model.training and model.fc.training and not model.features[3].training

    model.pool = Exploding()  # the forward pass raises after the hooked layer ran
    with pytest.raises(RuntimeError, match="boom"):
        fn(model, blob_image(), layer="features", **kwargs)
    assert all_hooks(model) == 0
    assert model.training and not model.features[3].training


def test_feature_hook_is_a_context_manager():
    model = TinyNet()
    with FeatureHook(model, "features") as hook:
        model(blob_image())
        assert len(model.features._forward_hooks) == 1
    assert len(model.features._forward_hooks) == 0
    assert hook.features[0].shape == (1, 2, 16, 16)


def test_bad_arguments_name_the_problem():
    model = TinyNet()
    with pytest.raises(ValueError, match="layer='nope'"):
        cam(model, blob_image(), layer="nope", linear=model.fc)
    with pytest.raises(ValueError, match="linear"):
        cam(model, blob_image(), layer="features.0", linear=nn.Linear(5, 1))
    with pytest.raises(ValueError, match="x:"):
        cam(model, torch.zeros(64, 64), layer="features", linear=model.fc)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("resnet18", "feature-extraction"),
        ("densenet121", "scratch"),
        ("efficientnet_b0", "scratch"),
    ],
)
def test_cam_is_exact_with_pneumolib_models_defaults(name, mode):
    from pneumolib.core.models import build_model, head

    torch.manual_seed(0)
    model = build_model(name, mode, weights="none")
    model.train()
    x = torch.randn(2, 1, 64, 64)
    features, logits = feature_maps(model, x)  # default layer and ReLU (DenseNet) from models
    rebuilt = (features * cam_weights(head(model))[:, None, None]).sum(1).mean((1, 2))
    torch.testing.assert_close(rebuilt + head(model).bias, logits[:, 0], rtol=1e-4, atol=1e-4)
    w_neg = cam_weights(head(model), BinaryLogitTarget(positive=False))
    torch.testing.assert_close(w_neg, -head(model).weight[0].detach())
    maps, probs = cam(model, x)
    assert maps.shape == (2, 64, 64)
    torch.testing.assert_close(probs, torch.sigmoid(logits[:, 0]))
    if name == "resnet18":  # GAP + linear right after the layer: Grad-CAM == CAM
        g_maps, _ = grad_cam(model, x)
        torch.testing.assert_close(maps, g_maps, rtol=1e-4, atol=1e-4)
    assert model.training and all_hooks(model) == 0
