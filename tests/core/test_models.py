"""Tests for pneumolib.core.models: shapes, 1-channel conversion, frozen backbone, weights,
checkpoints.

No network: every model is built with weights="none" or from a file written to tmp_path, and
the ImageNet tests point the torch hub cache at tmp_path and make downloads fail.
"""

from __future__ import annotations

import copy
import re
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from pneumolib.base.config import Config
from pneumolib.core.models import (
    MODEL_NAMES,
    MODES,
    Classifier,
    build_model,
    feature_layer_name,
    head,
    load_checkpoint_model,
    trainable_parameters,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions: several intra-op threads only fight other processes (5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Empty hub cache in tmp_path; any download attempt raises URLError. Returns the hub dir."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def fail(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    return hub


@pytest.fixture(scope="module")
def rgb_resnet18_file(tmp_path_factory):
    """A torchvision RGB resnet18 state dict (random init, 1000-class head) and its model."""
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18()
    for m in rgb.modules():  # non-trivial BN statistics, so loading them is observable
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("weights") / "resnet18_rgb.pth"
    torch.save(rgb.state_dict(), path)
    return path, rgb.eval()


def _calibrate_batchnorm(net: nn.Module, x: torch.Tensor) -> None:
    """Give BN layers the statistics of `x`, standing in for pretrained ones.

    With random init and default statistics (0, 1), a frozen EfficientNet's features shrink to
    ~1e-14 and the head's gradient vanishes below float precision.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: one batch sets the statistics outright
    net.train()
    with torch.no_grad():
        net(x)
    for bn in bns:
        bn.momentum = 0.1


def _head_name(model: Classifier) -> str:
    return next(n for n, m in model.named_modules() if m is head(model))


def test_legacy_densenet_keys_load(tmp_path):
    # torchvision's own densenet121 download names `norm1` as `norm.1` and predates
    # num_batches_tracked; passing that file as --weights must work too
    rgb = torchvision.models.densenet121()
    rgb.features.denseblock4.denselayer16.norm2.running_var.uniform_(0.5, 2)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
              for k, v in rgb.state_dict().items() if "num_batches" not in k}  # fmt: skip
    assert "features.denseblock4.denselayer16.norm.2.running_var" in legacy
    torch.save(legacy, tmp_path / "densenet121-a639ec97.pth")
    model = build_model(
        "densenet121", "finetune", weights=str(tmp_path / "densenet121-a639ec97.pth")
    )
    ours = model.net.features.denseblock4.denselayer16.norm2.running_var
    assert torch.equal(ours, rgb.features.denseblock4.denselayer16.norm2.running_var)


def test_finetune_and_scratch_train_everything(rgb_resnet18_file):
    path, _ = rgb_resnet18_file
    finetune = build_model("resnet18", "finetune", weights="none")
    assert all(p.requires_grad for p in finetune.parameters())
    assert len(trainable_parameters(finetune)) == len(list(finetune.parameters()))
    finetune.train()
    assert all(m.training for m in finetune.modules())

    # scratch ignores a weights file (with a warning): nothing of it is loaded
    with pytest.warns(UserWarning, match="ignores weights file"):
        scratch = build_model("resnet18", "scratch", weights=str(path))
    loaded = build_model("resnet18", "finetune", weights=str(path))
    assert all(p.requires_grad for p in scratch.parameters())
    assert not torch.allclose(scratch.net.conv1.weight, loaded.net.conv1.weight)
    assert torch.equal(scratch.net.bn1.running_var, torch.ones(64))  # fresh, not the file's


def test_scratch_ignores_imagenet_without_touching_the_network(no_network):
    model = build_model("resnet18", "scratch", weights="imagenet")
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1)


def test_imagenet_without_network_names_the_missing_file(no_network):
    with pytest.raises(FileNotFoundError) as err:
        build_model("resnet18", "finetune", weights="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(no_network / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights FILE" in msg and "weights=" in msg


def test_imagenet_loads_from_hub_cache(no_network, rgb_resnet18_file):
    path, rgb = rgb_resnet18_file
    cached = no_network / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    model = build_model("resnet18", "feature-extraction", weights="imagenet")
    assert torch.allclose(model.net.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))


def test_pneumolib_state_dict_loads_strictly(tmp_path):
    torch.manual_seed(1)
    a = build_model("efficientnet_b0", "finetune", weights="none").eval()
    torch.save(a.state_dict(), tmp_path / "a.pth")
    b = build_model("efficientnet_b0", "feature-extraction", weights=str(tmp_path / "a.pth"))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b.eval()(x))
    with pytest.raises(ValueError, match="does not fit resnet18"):
        build_model("resnet18", "finetune", weights=str(tmp_path / "a.pth"))


def test_bad_names_and_files_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'vgg11'.*resnet18.*efficientnet_b0"):
        build_model("vgg11")
    with pytest.raises(ValueError, match="unknown mode 'frozen'.*feature-extraction"):
        build_model("resnet18", "frozen")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("resnet18", "finetune", weights=str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth does not fit resnet18") as err:
        build_model("resnet18", "finetune", weights=str(tmp_path / "r34.pth"))
    assert "\n" not in str(err.value)


def test_load_checkpoint_model_round_trip(tmp_path):
    torch.manual_seed(2)
    model = build_model("resnet18", "feature-extraction", weights="none")
    model.eval()
    head(model).weight.data.normal_()
    cfg = Config(model="resnet18", mode="feature-extraction").to_dict()
    stats = {"mean": 0.5, "std": 0.25, "size": 64}
    torch.save({"model": model.state_dict(), "config": cfg, "stats": stats, "epoch": 3},
               tmp_path / "best.pt")  # fmt: skip
    loaded, cfg2, stats2 = load_checkpoint_model(tmp_path / "best.pt")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training and cfg2.to_dict() == cfg and stats2.to_dict() == stats

    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a pneumolib checkpoint"):
        load_checkpoint_model(tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint_model(tmp_path / "nope.pt")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_and_mode_gives_one_logit(name, mode):
    model = build_model(name, mode, weights="none")
    assert isinstance(head(model), nn.Linear) and head(model).out_features == 1
    feats = {}
    layer = model.get_submodule(feature_layer_name(model))
    hook = layer.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 1, 64, 64))
    hook.remove()
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    # the feature layer yields the map that global pooling consumes: (B, in_features, h, w)
    assert feats["x"].ndim == 4 and feats["x"].shape[:2] == (2, head(model).in_features)


def test_rgb_weights_become_one_channel_by_summing(rgb_resnet18_file):
    path, rgb = rgb_resnet18_file
    model = build_model("resnet18", "finetune", weights=str(path)).eval()
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ours = model.net.conv1(grey)
        theirs = rgb.conv1(grey.repeat(1, 3, 1, 1))
    assert model.net.conv1.in_channels == 1
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the rest of the backbone came from the file too: same pooled features end to end
    model.net.fc, rgb_body = nn.Identity(), copy.deepcopy(rgb)
    rgb_body.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(model(grey), rgb_body(grey.repeat(1, 3, 1, 1)), atol=1e-4)
    assert torch.equal(model.net.layer4[1].bn2.running_var, rgb.layer4[1].bn2.running_var)


def test_rgb_head_is_replaced_by_a_fresh_one_logit_linear(rgb_resnet18_file):
    path, _ = rgb_resnet18_file
    model = build_model("resnet18", "finetune", weights=str(path))
    assert head(model).weight.shape == (1, 512)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_feature_extraction_trains_only_the_head(name):
    torch.manual_seed(0)
    model = build_model(name, "feature-extraction", weights="none")
    x, y = torch.rand(4, 1, 64, 64), torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    _calibrate_batchnorm(model.net, x)
    fc = head(model)
    head_ids = {id(p) for p in fc.parameters()}
    assert {id(p) for p in trainable_parameters(model)} == head_ids
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_before = fc.weight.detach().clone()

    model.train()
    assert head(model).training  # (and EfficientNet's classifier dropout with it)
    assert not any(m.training for m in model.net.modules() if isinstance(m, nn.BatchNorm2d))
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    opt.step()

    after = model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith(_head_name(model)) for k in changed), changed
    assert any("running_mean" in k for k in after) and any("num_batches" in k for k in after)
    assert not torch.equal(fc.weight, head_before)
