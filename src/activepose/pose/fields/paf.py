"""Part affinity fields: unit-vector targets along limbs and line-integral scores of candidate limbs.

Same coordinates as `heatmap.py`: positions in cell index units (cell j's centre is at j).
"""

from __future__ import annotations

import logging

import numpy as np

LOG = logging.getLogger(__name__)


def encode_pafs(
    people: np.ndarray,
    limbs: tuple[tuple[int, int], ...] | list[tuple[int, int]],
    out_hw: tuple[int, int],
    stride: int,
    width: float,
) -> np.ndarray:
    """Return (2L, h, w) float32 PAF targets: limb l's unit vector (a -> b) in channels (2l, 2l+1).

    A cell gets the vector when its centre lies within `width` output cells of the segment, perpendicular
    to it, and between its ends extended by `width`. Only people with both ends labelled (v > 0) and
    distinct contribute; where several people's bands overlap the vectors are averaged.
    """
    people = np.asarray(people, dtype=np.float32)
    h, w = int(out_hw[0]), int(out_hw[1])
    n_limbs = len(limbs)
    out = np.zeros((2 * n_limbs, h, w), np.float32)
    if people.ndim != 3 or people.shape[-1] != 3:
        raise ValueError(f"people must be (N, K, 3), got {people.shape}")
    if not n_limbs or not people.shape[0]:
        return out
    idx = np.asarray(limbs, dtype=np.int64)
    a = people[:, idx[:, 0]]  # (N, L, 3)
    b = people[:, idx[:, 1]]
    pa = a[..., :2] / stride - 0.5  # cell index units
    pb = b[..., :2] / stride - 0.5
    vec = pb - pa
    length = np.linalg.norm(vec, axis=-1)
    ok = (a[..., 2] > 0) & (b[..., 2] > 0) & (length > 1e-6)
    ni, li = np.nonzero(ok)
    if not ni.size:
        return out
    pa, unit, length = pa[ni, li], vec[ni, li] / length[ni, li, None], length[ni, li]  # (P, 2), (P, 2), (P,)
    # Distances of every cell to every labelled limb segment, as broadcast (P, h, w) arrays.
    gx = np.arange(w, dtype=np.float32)
    gy = np.arange(h, dtype=np.float32)
    dx = gx[None, None, :] - pa[:, 0, None, None]  # (P, 1, w)
    dy = gy[None, :, None] - pa[:, 1, None, None]  # (P, h, 1)
    along = dx * unit[:, 0, None, None] + dy * unit[:, 1, None, None]  # (P, h, w)
    perp = np.abs(dx * unit[:, 1, None, None] - dy * unit[:, 0, None, None])
    mask = (perp <= width) & (along >= -width) & (along <= length[:, None, None] + width)
    # Sum per (limb, cell) over the covered cells only, with bincount (C speed; np.add.at is slow and a
    # one-hot BLAS matmul thrashes threads on small matrices in loaded DataLoader workers).
    pi, cell = np.nonzero(mask.reshape(len(li), h * w))
    key = li[pi] * (h * w) + cell
    size = n_limbs * h * w
    count = np.bincount(key, minlength=size)
    inv = (1.0 / np.maximum(count, 1)).astype(np.float32)
    out[0::2] = (np.bincount(key, unit[pi, 0], minlength=size) * inv).reshape(n_limbs, h, w)
    out[1::2] = (np.bincount(key, unit[pi, 1], minlength=size) * inv).reshape(n_limbs, h, w)
    return out


def limb_candidates(
    peak_key: np.ndarray, limbs: np.ndarray, batch_size: int, num_keypoints: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (batch, limb, ia, ib): every pair of peaks (ia of part a, ib of part b) per image and limb.

    `peak_key` = batch * K + channel of each peak, sorted ascending (as `find_peaks` returns them);
    `limbs` is (L, 2). Fully vectorised over images and limbs (a Cartesian product per group).
    """
    n_limbs = len(limbs)
    empty = np.zeros(0, np.int64)
    if not n_limbs or not peak_key.size:
        return empty, empty, empty, empty
    counts = np.bincount(peak_key, minlength=batch_size * num_keypoints).reshape(batch_size, num_keypoints)
    starts = (np.cumsum(counts.reshape(-1)) - counts.reshape(-1)).reshape(batch_size, num_keypoints)
    na, nb = counts[:, limbs[:, 0]].reshape(-1), counts[:, limbs[:, 1]].reshape(-1)  # groups g = b * L + l
    sa, sb = starts[:, limbs[:, 0]].reshape(-1), starts[:, limbs[:, 1]].reshape(-1)
    total = na * nb
    n = int(total.sum())
    if not n:
        return empty, empty, empty, empty
    grp = np.repeat(np.arange(total.size), total)
    off = np.arange(n) - np.repeat(np.cumsum(total) - total, total)
    nbg = nb[grp]
    ia = sa[grp] + off // nbg
    ib = sb[grp] + off % nbg
    return grp // n_limbs, grp % n_limbs, ia, ib


def limb_scores(
    pafs: np.ndarray,
    batch: np.ndarray,
    limb: np.ndarray,
    pa: np.ndarray,
    pb: np.ndarray,
    n_samples: int,
    sample_threshold: float,
    input_height: float,
    stride: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (score, inlier_ratio), each (M,), of M candidate limbs from their PAF line integral.

    `pafs` is (B, 2L, h, w); candidate m joins `pa[m]` to `pb[m]` ((M, 2) x/y in cell index units) in
    image `batch[m]` for limb `limb[m]`. The field is sampled (bilinear) at `n_samples` evenly spaced points
    from a to b, ends included; each sample's dot product with the unit vector a -> b is a per-sample score.
    score = mean dot product + min(0.5 * input_height / d - 1, 0) (OpenPose's prior against limbs longer
    than half the image, d = length in input pixels); inlier_ratio = fraction of samples above
    `sample_threshold`. Vectorised over all candidates: gathers, no per-sample Python loop.
    """
    m = len(limb)
    if not m:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    _, c, h, w = pafs.shape
    pa = np.asarray(pa, np.float32)
    pb = np.asarray(pb, np.float32)
    vec = pb - pa
    norm = np.hypot(vec[:, 0], vec[:, 1])
    unit = vec / np.maximum(norm, 1e-6)[:, None]
    t = np.linspace(0.0, 1.0, max(int(n_samples), 1), dtype=np.float32)
    px = np.clip(pa[:, 0, None] + vec[:, 0, None] * t, 0, w - 1)  # (M, T)
    py = np.clip(pa[:, 1, None] + vec[:, 1, None] * t, 0, h - 1)
    x0 = np.minimum(np.floor(px), max(w - 2, 0)).astype(np.int64)
    y0 = np.minimum(np.floor(py), max(h - 2, 0)).astype(np.int64)
    fx, fy = px - x0, py - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    flat = pafs.reshape(-1)
    base = ((batch * c + 2 * limb) * (h * w))[:, None]  # x channel; y channel is h*w further
    i00, i01, i10, i11 = base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0, base + y1 * w + x1
    w00, w01, w10, w11 = (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx

    def sample(off: int) -> np.ndarray:
        return w00 * flat[i00 + off] + w01 * flat[i01 + off] + w10 * flat[i10 + off] + w11 * flat[i11 + off]

    dots = sample(0) * unit[:, 0, None] + sample(h * w) * unit[:, 1, None]
    dots[norm < 1e-6] = 0.0  # coincident ends have no direction
    prior = np.minimum(0.5 * input_height / np.maximum(norm * stride, 1e-6) - 1.0, 0.0)
    score = dots.mean(axis=1) + prior
    ratio = (dots > sample_threshold).mean(axis=1)
    return score.astype(np.float32), ratio.astype(np.float32)
