"""Per-image uncertainty signals of the pose model beyond the paper's peak count, batched and cached like it.

- **Multi-peak entropy** (`mpe`, Liu & Ferrari, "Active learning for human pose estimation", ICCV 2017): per
  keypoint, the local maxima of the smoothed heatmap (over the cells showing the image, `_MPE_RADIUS` cells
  apart, at least `_MPE_FLOOR` high, the `_MPE_PEAKS` highest) are normalised to sum to 1 and their entropy
  taken; the image's score is the mean over keypoints. One clear peak per joint scores 0; a joint the model
  places in two or three places scores log 2 / log 3. A joint with no peak at all scores 0 here (that is
  what the peak-count filter measures). With several people per image every joint has several legitimate
  peaks: MPE suits images of one person (LSPET, most of youtube_pose) better than crowds.
- **Flip disagreement** (`tta-consistency`, the paper's own suggestion of test-time augmentation): the model
  runs on the image and on its mirror; the mirror's heatmaps are flipped back and their left/right channels
  swapped (the skeleton's flip pairs). Per keypoint with c = the larger of the two peaks and d = the distance
  between the two argmax cells over 0.1 x the longer side of the content (capped at 1),
  disagreement = c·d + |peak − mirrored peak|; the image's score is the mean over keypoints (0: the model says
  the same on both; up to 2). A model that is stable under a flip it was trained with is sure; one whose joints
  jump is not — whatever its peaks' heights.

`score_signal` returns one score per image (higher = more uncertain); the per-keypoint values are cached per
(model, image content, input size, smoothing, signal) in the same vector cache as the peaks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import UncertaintyConfig
from ..pose.coco import CocoKeypoints
from ..pose.fields.heatmap import single_threaded, smooth_heatmaps
from .uncertainty import check_keypoints, scan_pool

SIGNALS = ("mpe", "flip")
_MPE_RADIUS = 2  # cells: local maxima closer than this are one peak
_MPE_FLOOR = 0.05
_MPE_PEAKS = 5
_FLIP_TOL = 0.1  # of the content's longer side: the distance at which two placements fully disagree


def _masked_smooth(heatmaps: torch.Tensor, valid_hw: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return the keypoint channels of (B, K+1, h, w) smoothed, with cells outside the content at -inf."""
    b, _, h, w = heatmaps.shape
    sm = smooth_heatmaps(heatmaps[:, :-1].float(), sigma)
    valid_hw = valid_hw.to(sm.device)
    rows = torch.arange(h, device=sm.device)[None, :] < valid_hw[:, :1]
    cols = torch.arange(w, device=sm.device)[None, :] < valid_hw[:, 1:]
    mask = (rows[:, :, None] & cols[:, None, :])[:, None]
    return sm.masked_fill(~mask, -torch.inf)


def multi_peak_entropy(heatmaps: torch.Tensor, valid_hw: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return (B, K) multi-peak entropies of the model's (B, K+1, h, w) heatmaps (module doc)."""
    with single_threaded(heatmaps):
        sm = _masked_smooth(heatmaps, valid_hw, sigma)
        b, k, h, w = sm.shape
        pooled = F.max_pool2d(sm, 2 * _MPE_RADIUS + 1, stride=1, padding=_MPE_RADIUS)
        peaks = torch.where((sm == pooled) & (sm >= _MPE_FLOOR), sm, torch.zeros_like(sm))
        top = peaks.reshape(b, k, h * w).topk(min(_MPE_PEAKS, h * w), dim=2).values
        total = top.sum(dim=2, keepdim=True)
        p = torch.where(total > 0, top / total.clamp_min(1e-12), torch.zeros_like(top))
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=2)


def flip_disagreement(
    model: torch.nn.Module, x: torch.Tensor, valid_hw: torch.Tensor, sigma: float, flip_perm: np.ndarray
) -> torch.Tensor:
    """Return (B, K) disagreement between the model on x and on its mirror, flipped back (module doc)."""
    both = model(torch.cat([x, x.flip(-1)]))[-1][0].float()
    b = len(x)
    plain, mirrored = both[:b], both[b:].flip(-1)  # back in the original image's frame
    perm = torch.as_tensor(np.append(flip_perm, len(flip_perm)), device=mirrored.device)
    mirrored = mirrored[:, perm]  # left/right channels swapped; the background channel stays last
    with single_threaded(plain):
        a, m = _masked_smooth(plain, valid_hw, sigma), _masked_smooth(mirrored, valid_hw, sigma)
    _, k, h, w = a.shape
    pa, ia = a.reshape(b, k, -1).max(dim=2)
    pm, im = m.reshape(b, k, -1).max(dim=2)
    dy = (ia // w - im // w).float()
    dx = (ia % w - im % w).float()
    extent = valid_hw.to(a.device).amax(dim=1, keepdim=True).float().clamp_min(1)  # (B, 1) cells
    d = (torch.sqrt(dx * dx + dy * dy) / (_FLIP_TOL * extent)).clamp(max=1.0)
    pa, pm = pa.clamp(0, 1), pm.clamp(0, 1)
    return torch.maximum(pa, pm) * d + (pa - pm).abs()


def signal_cache_key(model_key: str, cfg: UncertaintyConfig, signal: str) -> str:
    return f"{signal}-v1-{model_key}-s{cfg.input_size}-g{cfg.smooth_sigma:g}"


def score_signal(
    model: torch.nn.Module,
    coco: CocoKeypoints,
    signal: str,
    cfg: UncertaintyConfig = UncertaintyConfig(),
    image_ids: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    cache: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    model_key: str | None = None,
    num_workers: int = 2,
    engine=None,
) -> np.ndarray:
    """Return the `signal` score ("mpe" or "flip") of every image of `coco` (or of `image_ids`, in order):
    the mean over keypoints of its per-keypoint values, higher = more uncertain. Reading, batching and caching
    are `score_pool`'s (`scan_pool`)."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}: choose from {', '.join(SIGNALS)}")
    ids = [f.image_id for f in coco.frames] if image_ids is None else [int(i) for i in image_ids]
    k = check_keypoints(model, coco)
    sigma = cfg.smooth_sigma
    if signal == "mpe":

        def stat(net, x, valid):
            return multi_peak_entropy(net(x)[-1][0], valid, sigma)

    else:
        perm = coco.skeleton.flip_permutation()

        def stat(net, x, valid):
            return flip_disagreement(net, x, valid, sigma, perm)

    values, _ = scan_pool(
        model, coco, ids, cfg, stat, k, lambda key: signal_cache_key(key, cfg, signal), device=device,
        cache=cache, progress=progress, model_key=model_key, num_workers=num_workers, engine=engine,
    )  # fmt: skip
    return values.astype(np.float64).mean(axis=1) if len(ids) else np.zeros(0)
