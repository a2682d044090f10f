"""Training targets (confidence maps + part affinity fields) and their decoding pieces.

`encode_targets` builds the OpenPose-style targets of one sample from its people in network-input pixel
coordinates. See `heatmap.py` / `paf.py` for the conventions, `assemble.py` for multi-person parsing.
"""

from __future__ import annotations

import numpy as np

from ...config import TargetConfig
from ..skeleton import Skeleton
from .heatmap import Peaks, encode_heatmaps, find_peaks, peak_confidences, smooth_heatmaps
from .paf import encode_pafs

__all__ = [
    "Peaks",
    "TargetConfig",
    "encode_targets",
    "encode_heatmaps",
    "encode_pafs",
    "find_peaks",
    "peak_confidences",
    "smooth_heatmaps",
]


def encode_targets(
    people: np.ndarray,
    skeleton: Skeleton,
    input_hw: tuple[int, int],
    cfg: TargetConfig = TargetConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Return (heatmaps (K+1, h, w), pafs (2L, h, w)) float32 targets, h = H // stride, w = W // stride.

    `people` is (N, K, 3) (x, y, v) in network-input pixel coordinates of an input of size `input_hw`;
    keypoints with v = 0 are ignored (an empty (0, K, 3) array gives all-background targets).
    """
    people = np.asarray(people, dtype=np.float32).reshape(-1, skeleton.num_keypoints, 3)
    out_hw = (int(input_hw[0]) // cfg.stride, int(input_hw[1]) // cfg.stride)
    heatmaps = encode_heatmaps(people, out_hw, cfg.stride, cfg.sigma)
    pafs = encode_pafs(people, skeleton.limbs, out_hw, cfg.stride, cfg.paf_width)
    return heatmaps, pafs
