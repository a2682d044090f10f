"""Bottom-up decoding: heatmaps + part affinity fields -> people (OpenPose-style parsing).

Pipeline (batched where it matters; see `Decoder`): Gaussian smoothing of the keypoint maps, max-pool NMS
with sub-cell (log-parabola) refinement, all candidate limbs of all images and limbs scored at once by
the PAF line integral, greedy bipartite matching per limb, then OpenPose's subset merge per image.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DecoderConfig
from .fields.assemble import assemble_people, greedy_match, limb_order
from .fields.heatmap import find_peaks, single_threaded, smooth_heatmaps
from .fields.paf import limb_candidates, limb_scores
from .skeleton import Skeleton

LOG = logging.getLogger(__name__)


class Decoder:
    """Turns model outputs into people; reusable across batches (holds no per-call state)."""

    def __init__(self, skeleton: Skeleton, cfg: DecoderConfig = DecoderConfig(), stride: int = 8):
        self.skeleton = skeleton
        self.cfg = cfg
        self.stride = int(stride)
        self.limbs = np.asarray(skeleton.limbs, np.int64).reshape(-1, 2)
        # Rank of each limb in the centre-out processing order of the assembly.
        self._rank = np.empty(len(self.limbs), np.int64)
        self._rank[limb_order(skeleton.num_keypoints, skeleton.limbs)] = np.arange(len(self.limbs))

    def __call__(self, heatmaps: torch.Tensor, pafs: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return per image (keypoints (N, K, 3) float32 in network-input pixels, scores (N,) float32).

        `heatmaps` is (B, K+1, h, w) (last channel = background, unused), `pafs` (B, 2L, h, w). Keypoint
        rows are (x, y, peak score), (0, 0, 0) for missing parts; people are sorted by score descending.
        Scores are the person scores of `assemble_people` (mean over parts of peak + connection scores).
        """
        k = self.skeleton.num_keypoints
        if heatmaps.ndim != 4 or heatmaps.shape[1] != k + 1:
            raise ValueError(f"heatmaps must be (B, {k + 1}, h, w), got {tuple(heatmaps.shape)}")
        n_limbs = len(self.limbs)
        if pafs.ndim != 4 or pafs.shape[1] != 2 * n_limbs or pafs.shape[0] != heatmaps.shape[0]:
            raise ValueError(f"pafs must be (B, {2 * n_limbs}, h, w), got {tuple(pafs.shape)}")
        with torch.no_grad(), single_threaded(heatmaps):
            return self._decode(heatmaps, pafs)

    def _decode(self, heatmaps: torch.Tensor, pafs: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        cfg, k, s = self.cfg, self.skeleton.num_keypoints, self.stride
        b, _, h, w = heatmaps.shape
        hm = smooth_heatmaps(heatmaps[:, :k].detach().float(), cfg.smooth_sigma)
        up = max(int(cfg.upsample), 1)
        if up > 1:
            hm = F.interpolate(hm, scale_factor=up, mode="bilinear", align_corners=False)
        peaks = find_peaks(hm, cfg.peak_threshold, cfg.nms_kernel, cfg.nms_saddle)
        p_batch = peaks.batch.cpu().numpy()
        p_chan = peaks.channel.cpu().numpy()
        p_score = peaks.score.float().cpu().numpy()
        p_xy = torch.stack([peaks.x, peaks.y], 1).float().cpu().numpy().reshape(-1, 2)
        if up > 1:  # back to cell index units of the original grid
            p_xy = (p_xy + 0.5) / up - 0.5

        # Candidate limbs of all images and limbs at once, scored by the PAF line integral.
        cb, cl, ia, ib = limb_candidates(p_batch * k + p_chan, self.limbs, b, k)
        if cl.size:
            paf_np = pafs.detach().float().cpu().numpy()
            score, ratio = limb_scores(
                paf_np, cb, cl, p_xy[ia], p_xy[ib], cfg.paf_samples, cfg.paf_score_threshold, h * s, s
            )
            ok = (ratio >= cfg.paf_min_ratio) & (score > 0)
            cb, cl, ia, ib, score = cb[ok], cl[ok], ia[ok], ib[ok], score[ok]
            keep = greedy_match(cl, ia, ib, score)
            cb, cl, ia, ib, score = cb[keep], cl[keep], ia[keep], ib[keep], score[keep]
            # Per image: limbs in centre-out order, strongest connections first within a limb.
            order = np.lexsort((-score, self._rank[cl], cb))
            cb, cl, ia, ib, score = cb[order], cl[order], ia[order], ib[order], score[order]
        else:
            score = np.zeros(0, np.float32)

        p_starts = np.searchsorted(p_batch, np.arange(b + 1))
        c_starts = np.searchsorted(cb, np.arange(b + 1))
        out = []
        for i in range(b):
            p0, p1 = p_starts[i], p_starts[i + 1]
            c0, c1 = c_starts[i], c_starts[i + 1]
            rows, scores = assemble_people(
                k, self.limbs, p_chan[p0:p1], p_score[p0:p1],
                cl[c0:c1], ia[c0:c1] - p0, ib[c0:c1] - p0, score[c0:c1],
                cfg.min_parts, cfg.min_person_score,
            )  # fmt: skip
            out.append(self._people(rows, scores, p_xy[p0:p1], p_score[p0:p1]))
        return out

    def _people(
        self, rows: np.ndarray, scores: np.ndarray, xy: np.ndarray, pscore: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (keypoints (N, K, 3), scores (N,)) in input pixels, sorted by score, capped at max_people."""
        k = self.skeleton.num_keypoints
        order = np.argsort(-scores, kind="stable")[: self.cfg.max_people]
        rows, scores = rows[order], scores[order]
        kps = np.zeros((len(rows), k, 3), np.float32)
        has = rows >= 0
        ids = rows[has]
        kps[has, :2] = (xy[ids] + 0.5) * self.stride
        kps[has, 2] = pscore[ids]
        return kps, scores.astype(np.float32)
