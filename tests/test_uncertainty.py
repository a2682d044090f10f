"""Uncertainty filter: counts on hand-made heatmaps, thKP scaling, score ordering, pooled scoring + cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activepose.config import DecoderConfig, SyntheticConfig, UncertaintyConfig
from activepose.errors import ConfigError
from activepose.fileio import read_image
from activepose.pose.coco import load_coco
from activepose.pose.data import letterbox
from activepose.pose.fields.heatmap import gaussian_kernel1d, peak_confidences
from activepose.pose.models import create_model
from activepose.pose.synthetic import make_synthetic_coco
from activepose.sampling.uncertainty import (
    PoolUncertainty,
    keypoint_threshold,
    masked_peak_confidences,
    score_peaks,
    score_pool,
)


def blob_maps(heights: list[list[float]], size: int = 16, sigma: float = 1.5) -> torch.Tensor:
    """Return (B, K+1, size, size) maps: keypoint k of image b is a Gaussian of height heights[b][k]."""
    b, k = len(heights), len(heights[0])
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = torch.zeros(b, k + 1, size, size)
    for i, row in enumerate(heights):
        for j, h in enumerate(row):
            cy, cx = 3 + (5 * j) % (size - 6), 3 + (3 * j) % (size - 6)
            maps[i, j] = h * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    maps[:, -1] = 1 - maps[:, :-1].amax(dim=1)
    return maps


def test_counts_on_hand_made_heatmaps():
    k = 18
    seven = [0.9] * 7 + [0.1] * (k - 7)  # 7 confident keypoints: certain at thKP 6
    five = [0.8] * 5 + [0.15] * (k - 5)  # 5: uncertain
    six = [0.5] * 6 + [0.0] * (k - 6)  # exactly thKP: certain
    peaks = peak_confidences(blob_maps([seven, five, six]), DecoderConfig().smooth_sigma).numpy()
    confident, uncertain, _ = score_peaks(peaks, UncertaintyConfig())
    assert confident.tolist() == [7, 5, 6]
    assert uncertain.tolist() == [False, True, False]
    # The decoder's smoothing lowers even a broad blob a little (sigma 1.5 -> ~0.92 of its height).
    assert (peaks[0, :7] < 0.9).all() and (peaks[0, :7] > 0.8).all()


def test_th_hm_boundary_is_inclusive_and_configurable():
    peaks = np.array([[0.3] * 6 + [0.29999] * 8, [0.31] * 5 + [0.0] * 9], np.float32)
    confident, uncertain, _ = score_peaks(peaks, UncertaintyConfig())  # 14 keypoints -> thKP 5
    assert confident.tolist() == [6, 5] and not uncertain.any()
    confident, uncertain, _ = score_peaks(peaks, UncertaintyConfig(th_hm=0.305, th_kp=5))
    assert confident.tolist() == [0, 5] and uncertain.tolist() == [True, False]
    _, uncertain, _ = score_peaks(peaks, UncertaintyConfig(th_kp=6))
    assert uncertain.tolist() == [False, True]


def test_smoothing_lowers_a_single_cell_spike_like_the_decoder():
    maps = torch.zeros(1, 3, 12, 12)
    maps[0, 0, 5, 6] = 0.4  # a one-cell spike above thHM ...
    maps[0, 1] = blob_maps([[0.6]], size=12, sigma=2.0)[0, 0]
    sigma = DecoderConfig().smooth_sigma
    peaks = peak_confidences(maps, sigma)[0]
    centre = gaussian_kernel1d(sigma)[len(gaussian_kernel1d(sigma)) // 2].item()
    assert peaks[0].item() == pytest.approx(0.4 * centre**2, rel=1e-5)  # ... falls below it (0.25)
    assert peaks[1].item() == pytest.approx(0.6, rel=0.05)  # a broad blob keeps its height
    assert score_peaks(peaks[None].numpy(), UncertaintyConfig(th_kp=1))[0].tolist() == [1]
    assert peak_confidences(maps, 0.0)[0, 0].item() == pytest.approx(0.4)


def test_letterbox_padding_is_masked():
    maps = torch.zeros(2, 2, 8, 8)
    maps[:, 0, 6, 1] = 5.0  # a strong peak in rows 6-7, padding for image 0
    maps[:, 0, 2, 2] = 0.4
    valid = torch.tensor([[5, 8], [8, 8]])
    masked = masked_peak_confidences(maps, valid, 0.0)
    assert masked[:, 0].tolist() == pytest.approx([0.4, 5.0])
    full = masked_peak_confidences(maps, torch.tensor([[8, 8], [8, 8]]), 0.5)
    torch.testing.assert_close(full, peak_confidences(maps, 0.5))


def test_keypoint_threshold_scales_and_validates():
    assert [keypoint_threshold(k) for k in (14, 17, 18, 1, 2, 36)] == [5, 6, 6, 1, 1, 12]
    assert keypoint_threshold(14, 14) == 14 and keypoint_threshold(14, 1) == 1
    with pytest.raises(ConfigError, match="--th-kp must be between 1 and the number of keypoints \\(14\\)"):
        keypoint_threshold(14, 15)
    with pytest.raises(ConfigError, match="--th-kp must be between 1"):
        keypoint_threshold(14, 0)
    with pytest.raises(ValueError, match="num_keypoints"):
        keypoint_threshold(0)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(th_hm=0.0), r"^--th-hm must be in \(0, 1\], got 0.0$"),
        (dict(th_hm=1.5), r"^--th-hm must be in \(0, 1\], got 1.5$"),
        (dict(th_kp=0), r"^--th-kp must be >= 1, got 0$"),
        (dict(input_size=100), r"^--input-size must be a positive multiple of 8, got 100$"),
        (dict(batch_size=0), r"^--batch-size must be >= 1, got 0$"),
        (dict(th_hm=0.0, th_kp=0), r"^--th-hm must be .*; --th-kp must be >= 1, got 0$"),
    ],
)
def test_uncertainty_config_errors_name_the_option(kw, message):
    with pytest.raises(ConfigError, match=message):
        UncertaintyConfig(**kw)
    assert UncertaintyConfig(th_hm=1.0, th_kp=1).th_hm == 1.0  # the closed end of (0, 1] is valid


def test_score_ranks_every_uncertain_image_above_every_certain_one():
    rng = np.random.default_rng(0)
    peaks = rng.uniform(-0.2, 1.2, (400, 14)) ** 2
    _, uncertain, score = score_peaks(peaks)
    assert 0 < uncertain.sum() < len(peaks)
    assert score[uncertain].min() > score[~uncertain].max()
    assert (score[uncertain] >= 1).all() and (score[~uncertain] < 1).all()
    # Same number of confident keypoints: lower activations -> more uncertain (ties broken).
    a = [0.9] * 3 + [0.2] * 11
    b = [0.9] * 3 + [0.25] * 11
    c = [0.5] * 3 + [0.25] * 11
    conf, unc, s = score_peaks(np.array([a, b, c]))
    assert conf.tolist() == [3, 3, 3] and unc.all()
    assert s[0] > s[2] > s[1]  # a's 5th peak is lowest; b vs c: same 5th peak, c lower on average
    pool = PoolUncertainty(np.arange(3), np.array([a, b, c]), conf, unc, s)
    assert pool.ranking().tolist() == [0, 2, 1] and pool.num_uncertain == 3


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    cfg = SyntheticConfig(num_images=5, image_size=(64, 40), max_people=2, image_format="png")
    coco = load_coco(make_synthetic_coco(tmp_path_factory.mktemp("syn"), "lsp14", cfg, seed=3))
    sk = coco.skeleton
    torch.manual_seed(0)
    model = create_model(
        "vgg_tiny", num_keypoints=sk.num_keypoints, num_limbs=sk.num_limbs, width=0.25, channels=32,
        pretrained=False,
    )  # fmt: skip
    return coco, model


def test_score_pool_rows_follow_ids_and_match_a_direct_forward(tiny_pool):
    coco, model = tiny_pool
    cfg = UncertaintyConfig(input_size=64, batch_size=2)
    ids = [4, 1, 5]
    res = score_pool(model.train(), coco, cfg, image_ids=ids)
    assert model.training  # mode restored
    assert res.image_ids.tolist() == ids and res.peaks.shape == (3, 14) and res.peaks.dtype == np.float32
    assert res.th_kp == 5 and res.cache_hits == 0
    # Reference: one image through letterbox + forward; 64x40 -> content rows 0..4 of 8 output rows.
    image, _ = letterbox(read_image(coco.image_path(1)), 64)
    x = torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        hm = model.eval()(x)[-1][0]
    ref = masked_peak_confidences(hm, torch.tensor([[5, 8]]), cfg.smooth_sigma)[0].numpy()
    np.testing.assert_allclose(res.peaks[1], ref, rtol=1e-4, atol=1e-5)
    conf, unc, score = score_peaks(res.peaks, cfg)
    assert (res.confident == conf).all() and (res.uncertain == unc).all() and np.allclose(res.score, score)


def test_score_pool_cache_avoids_recomputation(tiny_pool, tmp_path):
    coco, model = tiny_pool
    cfg = UncertaintyConfig(input_size=64, batch_size=4)
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        done: list[int] = []
        first = score_pool(model, coco, cfg, cache=tmp_path, progress=done.append, num_workers=0)
        assert calls[0] == 2 and sum(done) == 5  # 5 images in batches of 4
        again = score_pool(model, coco, cfg, image_ids=[3, 2], cache=tmp_path)
        assert calls[0] == 2 and again.cache_hits == 2
        np.testing.assert_array_equal(again.peaks, first.peaks[[2, 1]])
        # Another smoothing is another cache entry; other weights (same caller key aside) too.
        score_pool(model, coco, UncertaintyConfig(input_size=64, smooth_sigma=1.0), cache=tmp_path)
        assert calls[0] == 3
        with torch.no_grad():
            model.stages[-1].heatmaps[-1].bias.add_(0.01)
        score_pool(model, coco, cfg, cache=tmp_path)
        assert calls[0] == 5
        with torch.no_grad():
            model.stages[-1].heatmaps[-1].bias.sub_(0.01)
    finally:
        handle.remove()
