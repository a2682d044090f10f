"""Bottom-up decoding: heatmaps + part affinity fields -> people (OpenPose-style parsing).

Pipeline (batched where it matters; see `Decoder`): Gaussian smoothing of the keypoint maps, max-pool NMS
with sub-cell (log-parabola) refinement, all candidate limbs of all images and limbs scored at once by
the PAF line integral, greedy bipartite matching per limb, then OpenPose's subset merge per image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .fields.assemble import assemble_people, greedy_match, limb_order
from .fields.heatmap import find_peaks, single_threaded, smooth_heatmaps
from .fields.paf import limb_candidates, limb_scores
from .skeleton import Skeleton

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder parameters (thresholds from OpenPose / OpenPose-plus).

    - peak_threshold: minimum smoothed heatmap value of a keypoint peak.
    - smooth_sigma: std (output cells) of the Gaussian smoothing before peak finding (0 = off). 0.5, not
      1.0: on the real sports_multi photos (long side 256) decoding the ground-truth targets recovers
      161/162 people at 0.5 but 153/162 at 1.0, whose blur merges same-type joints of people standing
      2-3 cells apart (and shifts them: p90 error 2.0 px vs 0.3 px). OpenPose smooths by 3 px at full
      resolution, ~0.4 cell at stride 8. `peak_confidences` must get the same value.
    - nms_kernel: max-pool NMS window (cells).
    - nms_saddle: also keep a peak beaten only by a diagonal neighbour when both cells between them are
      below nms_saddle x its value (see `find_peaks`; 0 = plain max-pool NMS). Separates two people's
      joints in diagonally adjacent cells; a single round blob never triggers it.
    - upsample: factor to bilinearly upsample the smoothed heatmaps before NMS. 1 (default) = none: the
      log-parabola sub-cell refinement already localises Gaussian-like peaks to ~0.01 cell at no cost,
      whereas upsampling multiplies the NMS work by upsample^2.
    - paf_samples: points sampled along each candidate limb for the line integral.
    - paf_score_threshold: per-sample PAF dot-product threshold.
    - paf_min_ratio: minimum fraction of samples above that threshold.
    - min_parts: minimum number of parts of a person (capped at K, so a 1-keypoint skeleton works).
    - min_person_score: minimum person score = (sum of part peak scores + connection scores) / parts.
    - max_people: keep at most this many people per image (highest scores).
    """

    peak_threshold: float = 0.05
    smooth_sigma: float = 0.5
    nms_kernel: int = 3
    nms_saddle: float = 0.9
    upsample: int = 1
    paf_samples: int = 10
    paf_score_threshold: float = 0.05
    paf_min_ratio: float = 0.8
    min_parts: int = 4
    min_person_score: float = 0.3
    max_people: int = 100

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                problems.append(
                    f"{DECODER_OPTIONS.get(name, name)} must be {rule}, got {getattr(self, name)!r}"
                )

        for name in ("peak_threshold", "nms_saddle", "paf_score_threshold", "paf_min_ratio"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "in [0, 1]")
        need(self.smooth_sigma >= 0, "smooth_sigma", ">= 0")
        need(self.nms_kernel >= 3 and self.nms_kernel % 2 == 1, "nms_kernel", "an odd number >= 3")
        need(self.upsample >= 1, "upsample", ">= 1")
        need(self.paf_samples >= 2, "paf_samples", ">= 2")
        need(self.min_parts >= 1, "min_parts", ">= 1")
        need(self.min_person_score >= 0, "min_person_score", ">= 0")
        need(self.max_people >= 1, "max_people", ">= 1")
        if problems:
            raise ConfigError("; ".join(problems))


# DecoderConfig fields a user sets from the command line -> the option's spelling (others: the field name).
DECODER_OPTIONS = {"min_parts": "--min-parts", "min_person_score": "--min-score"}


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
