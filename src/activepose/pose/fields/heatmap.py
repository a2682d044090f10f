"""Keypoint confidence maps: Gaussian targets, the decoder's smoothing, and batched peak finding.

Coordinates follow the project convention: output cell j covers input pixels [j*s, (j+1)*s) and its
centre is x = (j + 0.5) * s. Inside this module peak positions are given in *cell index units*, where
cell j's centre is at u = j, so u = x / s - 0.5 and x = (u + 0.5) * s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def single_threaded(tensor: torch.Tensor) -> Iterator[None]:
    """Run torch CPU ops on one intra-op thread inside the block when `tensor` is on the CPU.

    Decoding works on output-sized maps (~10^5 values): multi-threading gains nothing there, and on a
    loaded machine OpenMP's barriers made the same ops 30x slower (280 vs 8 ms per batch of 8). The
    process-wide setting is restored on exit.
    """
    if tensor.device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def encode_heatmaps(people: np.ndarray, out_hw: tuple[int, int], stride: int, sigma: float) -> np.ndarray:
    """Return (K+1, h, w) float32 targets: per keypoint the max over people of a Gaussian, then background.

    `people` is (N, K, 3) in network-input pixel coordinates; only labelled keypoints (v > 0) contribute.
    The Gaussian exp(-d^2 / (2 sigma^2)) is evaluated at cell centres with d in output-cell units.
    The last channel is the background, 1 - max over the keypoint channels.
    """
    people = np.asarray(people, dtype=np.float32)
    h, w = int(out_hw[0]), int(out_hw[1])
    if people.ndim != 3 or people.shape[-1] != 3:
        raise ValueError(f"people must be (N, K, 3), got {people.shape}")
    n, k = people.shape[:2]
    out = np.zeros((k + 1, h, w), np.float32)
    if n and k:
        lab = people[..., 2] > 0
        # Keypoint positions in cell index units (cell centre j <-> u = j).
        u = people[..., 0] / stride - 0.5
        v = people[..., 1] / stride - 0.5
        inv = np.float32(-0.5 / (sigma * sigma))
        # Separable Gaussian (N, K, h) x (N, K, w) outer product; unlabelled keypoints get a zero row.
        gx = np.exp(inv * (np.arange(w, dtype=np.float32) - u[..., None]) ** 2) * lab[..., None]
        gy = np.exp(inv * (np.arange(h, dtype=np.float32) - v[..., None]) ** 2)
        np.max(gy[..., :, None] * gx[..., None, :], axis=0, out=out[:k])
    out[k] = 1.0 - out[:k].max(axis=0) if k else 1.0
    return out


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Return the normalised 1-D Gaussian kernel (radius ceil(3 sigma)) used for heatmap smoothing."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@functools.lru_cache(maxsize=64)
def _smoothing_matrix(n: int, sigma: float) -> torch.Tensor:
    """Return the (n, n) matrix applying the 1-D kernel along an axis of length n, replicate padding folded in."""
    k = gaussian_kernel1d(sigma)
    r = (k.numel() - 1) // 2
    rows = torch.arange(n).repeat_interleave(k.numel())
    cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp(0, n - 1).reshape(-1)
    m = torch.zeros(n, n)
    m.index_put_((rows, cols), k.repeat(n), accumulate=True)
    return m


def smooth_heatmaps(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return `heatmaps` (B, C, h, w) smoothed by a separable Gaussian of std `sigma` cells (0 = unchanged).

    Depthwise (per channel) and batched, with replicate padding so that a peak on the border stays a peak
    and keeps its height. This is exactly the smoothing the decoder applies before peak finding. The two
    1-D passes are products with small banded (h, h) and (w, w) matrices (the padding folded in): on CPU
    that is over 10x faster than depthwise conv2d for output-sized maps.
    """
    if sigma <= 0:
        return heatmaps
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, C, h, w), got {tuple(heatmaps.shape)}")
    b, c, h, w = heatmaps.shape
    if b * c * h * w == 0:
        return heatmaps
    mh = _smoothing_matrix(h, float(sigma)).to(device=heatmaps.device, dtype=heatmaps.dtype)
    mw = _smoothing_matrix(w, float(sigma)).to(device=heatmaps.device, dtype=heatmaps.dtype)
    return torch.matmul(torch.matmul(mh, heatmaps), mw.T)


def peak_confidences(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return (B, K) max activation per keypoint channel (background excluded) after decoder smoothing.

    `heatmaps` is the model's (B, K+1, h, w) output; the last channel (background) is dropped.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K+1, h, w), got {tuple(heatmaps.shape)}")
    kp = heatmaps[:, :-1]
    if kp.shape[0] * kp.shape[1] == 0 or kp.shape[2] * kp.shape[3] == 0:
        return heatmaps.new_zeros((heatmaps.shape[0], kp.shape[1]))
    with single_threaded(heatmaps):
        return smooth_heatmaps(kp, sigma).amax(dim=(2, 3))


class Peaks(NamedTuple):
    """Peaks of a batch of maps: all fields are 1-D tensors of length P.

    `x`, `y` are sub-cell positions in cell index units (cell j's centre is at j; input pixel
    x_px = (x + 0.5) * stride); `score` is the map value at the peak cell.
    """

    batch: torch.Tensor
    channel: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    score: torch.Tensor


def find_peaks(
    heatmaps: torch.Tensor, threshold: float, nms_kernel: int = 3, saddle: float = 0.0, refine: bool = True
) -> Peaks:
    """Return the local maxima above `threshold` of (B, C, h, w) maps (max-pool NMS), sub-cell refined.

    Pass already smoothed maps without the background channel. A cell is a peak when it is the max of its
    `nms_kernel` x `nms_kernel` window and exceeds `threshold`. With `saddle` > 0 (3x3 window only), a cell
    that beats its 4 direct neighbours but not a diagonal one is kept too when the two cells between them
    are both below `saddle` x its value: two people's same keypoint in diagonally adjacent cells, which a
    square window would merge. Exact plateaus (a keypoint on a cell border gives two equal cells) keep
    only the first cell in raster order. Refinement fits a parabola to the log of the 3 values around the
    peak on each axis (exact for a Gaussian; cf. DARK, Zhang et al. 2020), offset clipped to +-0.5 cell;
    on a border the missing side is replaced by the Gaussian width estimated on the other axis (heatmap
    blobs are isotropic), or the offset is left at 0 in a corner. Window max uses shifted maxima (torch's
    CPU max_pool2d with stride 1 is ~15x slower); saddle, tie and refinement checks gather only around
    candidate cells.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, C, h, w), got {tuple(heatmaps.shape)}")
    b, c, h, w = heatmaps.shape
    hm = heatmaps.detach()
    if b * c * h * w == 0:
        e = torch.zeros(0, dtype=torch.long, device=hm.device)
        f = torch.zeros(0, dtype=hm.dtype, device=hm.device)
        return Peaks(e, e, f, f, f)
    pad = max(int(nms_kernel) // 2, 1)
    wp = w + 2 * pad
    p = F.pad(hm, (pad, pad, pad, pad), value=-math.inf)
    rowmax = p[..., :, 0:w]
    for dx in range(1, 2 * pad + 1):
        rowmax = torch.maximum(rowmax, p[..., :, dx : dx + w])
    pooled = rowmax[..., 0:h, :]
    for dy in range(1, 2 * pad + 1):
        pooled = torch.maximum(pooled, rowmax[..., dy : dy + h, :])
    above = hm > threshold
    square = hm >= pooled
    flat = p.reshape(-1)

    def neighbours(idx: tuple[torch.Tensor, ...]):
        bi, ci, yi, xi = idx
        base = ((bi * c + ci) * (h + 2 * pad) + yi + pad) * wp + xi + pad

        def at(dy: int, dx: int) -> torch.Tensor:
            return flat[base + dy * wp + dx]

        return at

    if saddle > 0 and int(nms_kernel) == 3:
        cand = torch.nonzero(above & ~square, as_tuple=True)
        if cand[0].numel():
            at = neighbours(cand)
            v = at(0, 0)
            ok = (v >= at(0, -1)) & (v >= at(0, 1)) & (v >= at(-1, 0)) & (v >= at(1, 0))
            lim = saddle * v
            for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                ok &= (at(dy, dx) <= v) | ((at(dy, 0) < lim) & (at(0, dx) < lim))
            square[tuple(i[ok] for i in cand)] = True
    idx = torch.nonzero(square & above, as_tuple=True)
    at = neighbours(idx)
    score = at(0, 0)
    # Plateau tie-break: drop a peak equal to its left / upper-left / upper / upper-right neighbour.
    keep = (at(0, -1) != score) & (at(-1, -1) != score) & (at(-1, 0) != score) & (at(-1, 1) != score)
    idx = tuple(i[keep] for i in idx)
    bi, ci, yi, xi = idx
    score = score[keep]
    xf, yf = xi.to(hm.dtype), yi.to(hm.dtype)
    if refine and bi.numel():
        dx, dy = _refine(neighbours(idx), yi, xi, h, w, score)
        xf, yf = xf + dx, yf + dy
    return Peaks(bi, ci, xf, yf, score)


def _refine(at, yi, xi, h: int, w: int, centre) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sub-cell offsets (dx, dy) from a log-parabola fit around each peak (see `find_peaks`)."""
    # Relative floor: keeps logs finite for non-positive network outputs and bounds the curvature.
    floor = centre.clamp_min(1e-6) * 1e-3
    lc = torch.log(centre.clamp_min(1e-6))

    def logv(dy: int, dx: int) -> torch.Tensor:
        return torch.log(torch.maximum(at(dy, dx), floor))  # -inf padding -> floor, masked below

    ll, lr, lu, ld = logv(0, -1), logv(0, 1), logv(-1, 0), logv(1, 0)
    in_x = (xi > 0) & (xi < w - 1)
    in_y = (yi > 0) & (yi < h - 1)
    eps = 1e-9
    cx = ll - 2 * lc + lr  # curvature = -1 / sigma^2 for a Gaussian
    cy = lu - 2 * lc + ld
    cx_ok, cy_ok = cx < -eps, cy < -eps
    safe_cx = torch.where(cx_ok, cx, -1.0)
    safe_cy = torch.where(cy_ok, cy, -1.0)
    dx = torch.where(in_x & cx_ok, 0.5 * (ll - lr) / safe_cx, 0.0)
    dy = torch.where(in_y & cy_ok, 0.5 * (lu - ld) / safe_cy, 0.0)
    # Border: one-sided Gaussian fit using the other axis' curvature (isotropic blobs).
    bx = ~in_x & in_y & cy_ok & (w > 1)
    dx = torch.where(bx, _one_sided(lc, ll, lr, xi == 0, safe_cy), dx)
    by = ~in_y & in_x & cx_ok & (h > 1)
    dy = torch.where(by, _one_sided(lc, lu, ld, yi == 0, safe_cx), dy)
    return dx.clamp(-0.5, 0.5), dy.clamp(-0.5, 0.5)


def _one_sided(lc, lprev, lnext, at_start, curv) -> torch.Tensor:
    """Return the offset of a Gaussian's centre from its peak cell given one neighbour and the curvature.

    With log g(t) = -(t - m)^2 / (2 s^2) and curvature c = -1 / s^2: log g(1) - log g(0) = c (0.5 - m),
    so m = 0.5 - (log g(1) - log g(0)) / c; mirrored for the previous neighbour.
    """
    fwd = 0.5 - (lnext - lc) / curv
    bwd = -0.5 + (lprev - lc) / curv
    return torch.where(at_start, fwd, bwd)
