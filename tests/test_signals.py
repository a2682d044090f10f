"""Multi-peak entropy and flip disagreement on a synthetic model whose unstable images are known."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from activepose.config import SelectionConfig, SyntheticConfig, UncertaintyConfig
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.sampling.signals import flip_disagreement, multi_peak_entropy, score_signal
from activepose.sampling.strategies import SelectionContext, select_batch


class BrightSpots(torch.nn.Module):
    """A stand-in pose model: every keypoint's heatmap is the image's brightness per 8-px cell (max 1), plus a
    faint bias towards the left of the frame (0.01 at the left edge, 0 at the right).

    On an image with one bright spot it shows one peak per joint, in the same place on the image and on its
    mirror. On an image with two equally bright spots it has two peaks per joint, and the bias decides: the left
    spot wins on the image, the mirror's left spot — the image's right one — on the mirror. An ambiguous image
    that a bias resolves differently under the flip: unstable."""

    stride = 8

    def __init__(self, num_keypoints: int):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.anchor = torch.nn.Parameter(
            torch.zeros(1)
        )  # a parameter: the model has a device and a fingerprint

    def forward(self, x):
        cells = torch.nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 8)
        w = cells.shape[-1]
        bias = 0.01 * (1 - torch.arange(w, dtype=cells.dtype) / w)
        maps = cells / cells.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6) + bias + 0 * self.anchor
        heat = maps.repeat(1, self.num_keypoints + 1, 1, 1)
        return [(heat, torch.zeros_like(heat[:, :2]))]


@pytest.fixture(scope="module")
def spots(tmp_path_factory):
    """16 images of 64 px: even ids one bright 8-px square, odd ids two equal squares in one row."""
    out = tmp_path_factory.mktemp("spots")
    coco = load_coco(
        make_synthetic_coco(out, "lsp14", SyntheticConfig(num_images=16, image_size=(64, 64)), seed=3)
    )
    rng = np.random.default_rng(0)
    two = set()
    for k, image_id in enumerate(coco.image_ids):
        img = np.zeros((64, 64, 3), np.uint8)
        row = int(rng.integers(1, 7)) * 8
        img[row : row + 8, 8:16] = 255
        if k % 2:
            img[row : row + 8, 40:48] = 255
            two.add(image_id)
        cv2.imwrite(str(coco.image_path(image_id)), img)
    return coco, two


def test_multi_peak_entropy_is_zero_for_one_peak_and_log2_for_two():
    maps = torch.zeros(2, 3, 8, 8)
    maps[:, :2, 2, 2] = 1.0
    maps[1, :2, 2, 6] = 1.0  # image 1: every joint in two places
    valid = torch.tensor([[8, 8], [8, 8]])
    h = multi_peak_entropy(maps, valid, sigma=0.0)
    assert torch.allclose(h[0], torch.zeros(2), atol=1e-6)
    assert torch.allclose(h[1], torch.full((2,), math.log(2)), atol=1e-5)
    padded = torch.tensor([[8, 8], [8, 4]])  # image 1's second peak lies in letterbox padding: not a peak
    assert torch.allclose(multi_peak_entropy(maps, padded, sigma=0.0)[1], torch.zeros(2), atol=1e-6)


def test_flip_disagreement_is_zero_on_one_spot_and_high_where_a_bias_decides():
    model = BrightSpots(2)
    x = torch.zeros(2, 3, 64, 64)
    x[:, :, 16:24, 8:16] = 1.0
    x[1, :, 16:24, 40:48] = 1.0
    d = flip_disagreement(model, x, torch.tensor([[8, 8], [8, 8]]), 0.0, np.array([1, 0]))
    assert torch.allclose(d[0], torch.zeros(2), atol=1e-6)
    assert (d[1] > 0.9).all()  # the argmax jumps 4 cells (over 0.1 x 8 cells): full disagreement at peak ~1


@pytest.mark.parametrize("strategy,signal", [("mpe", "mpe"), ("tta-consistency", "flip")])
def test_the_signal_strategies_rank_the_ambiguous_images_first(spots, strategy, signal, tmp_path):
    coco, two = spots
    model = BrightSpots(coco.skeleton.num_keypoints)
    ucfg = UncertaintyConfig(input_size=64, smooth_sigma=0.0)
    scores = score_signal(model, coco, signal, ucfg, cache=tmp_path / "c", device="cpu")
    again = score_signal(model, coco, signal, ucfg, cache=tmp_path / "c", device="cpu")  # from the cache
    assert np.array_equal(scores, again)
    ctx = SelectionContext(
        coco, None, model, SelectionConfig(uncertainty=ucfg, cache_dir=tmp_path), device="cpu"
    )
    result = select_batch(strategy, ctx, len(two))
    assert set(result.ids) == two
    assert min(result.scores) > max(s for i, s in zip(coco.image_ids, scores, strict=True) if i not in two)


class HalfFrames(torch.nn.Module):
    """Keypoint 0 (a 'left' joint) is the brightest cell of the image's left half, keypoint 1 (its 'right'
    partner) of the right half: mirrored, the roles swap, which the flip pairs must undo."""

    stride = 8
    num_keypoints = 2

    def forward(self, x):
        cells = torch.nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 8)
        w = cells.shape[-1]
        left = (torch.arange(w) < w // 2).to(cells.dtype)
        heat = torch.cat([cells * left, cells * (1 - left), torch.zeros_like(cells)], dim=1)
        return [(heat, torch.zeros_like(heat[:, :2]))]


def test_flip_disagreement_swaps_left_and_right_channels():
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 8:16, 8:16] = 1.0
    x[:, :, 40:48, 40:48] = 1.0
    valid = torch.tensor([[8, 8]])
    assert torch.allclose(flip_disagreement(HalfFrames(), x, valid, 0.0, np.array([1, 0])), torch.zeros(2))
    assert (flip_disagreement(HalfFrames(), x, valid, 0.0, np.array([0, 1])) > 0.9).all()  # pairs ignored
