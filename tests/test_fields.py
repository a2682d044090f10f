"""Targets (heatmaps, PAFs), smoothing, peak finding, limb scoring and assembly pieces."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from activepose.config import TargetConfig
from activepose.pose.fields import (
    encode_heatmaps,
    encode_pafs,
    encode_targets,
    find_peaks,
    peak_confidences,
    smooth_heatmaps,
)
from activepose.pose.fields.assemble import assemble_people, greedy_match, limb_order
from activepose.pose.fields.heatmap import gaussian_kernel1d
from activepose.pose.fields.paf import limb_candidates, limb_scores
from activepose.pose.skeleton import PRESETS, Skeleton

# A standing pose, in units of the person's height, centred near the hips (x right, y down).
TEMPLATE = {
    "nose": (0.0, -0.42), "left_eye": (0.03, -0.45), "right_eye": (-0.03, -0.45), "left_ear": (0.06, -0.43),
    "right_ear": (-0.06, -0.43), "head_top": (0.0, -0.52), "neck": (0.0, -0.33),
    "left_shoulder": (0.12, -0.32), "right_shoulder": (-0.12, -0.32), "left_elbow": (0.2, -0.15),
    "right_elbow": (-0.2, -0.15), "left_wrist": (0.24, 0.0), "right_wrist": (-0.24, 0.0),
    "left_hip": (0.08, 0.02), "right_hip": (-0.08, 0.02), "left_knee": (0.1, 0.25),
    "right_knee": (-0.1, 0.25), "left_ankle": (0.11, 0.47), "right_ankle": (-0.11, 0.47),
}  # fmt: skip


def make_person(
    skeleton: Skeleton, cx: float, cy: float, height: float, missing=(), seed: int = 0
) -> np.ndarray:
    """Return one (K, 3) person: the template at (cx, cy), `height` px tall, lightly jittered."""
    rng = np.random.default_rng(seed)
    xy = np.array([TEMPLATE[n] for n in skeleton.keypoints]) * height + (cx, cy)
    xy += rng.uniform(-0.02, 0.02, xy.shape) * height
    person = np.concatenate([xy, np.full((len(xy), 1), 2.0)], 1).astype(np.float32)
    for name in missing:
        person[skeleton.index(name)] = 0
    return person


def person_grid(skeleton: Skeleton) -> np.ndarray:
    """Return 4 people of different sizes on a 256x256 input, some with unlabelled extremities."""
    return np.stack(
        [
            make_person(skeleton, 60, 90, 100, missing=("left_wrist",), seed=1),
            make_person(skeleton, 140, 135, 140, seed=2),
            make_person(skeleton, 212, 100, 90, missing=("right_ankle", "left_ankle"), seed=3),
            make_person(skeleton, 60, 205, 70, seed=4),
        ]
    )


# ---------------------------------------------------------------- heatmap targets
def test_heatmap_gaussian_at_cell_centres():
    s, sigma = 8, 1.0
    people = np.zeros((1, 2, 3), np.float32)
    people[0, 0] = [(5 + 0.5) * s, (3 + 0.5) * s, 2]  # exactly on the centre of cell (x=5, y=3)
    hm = encode_heatmaps(people, (8, 10), s, sigma)
    assert hm.shape == (3, 8, 10) and hm.dtype == np.float32
    assert hm[0, 3, 5] == pytest.approx(1.0)
    assert np.unravel_index(hm[0].argmax(), hm[0].shape) == (3, 5)
    assert hm[0, 3, 6] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert hm[0, 5, 7] == pytest.approx(math.exp(-8 / (2 * sigma**2)), rel=1e-5)
    assert not hm[1].any(), "unlabelled keypoint must leave its channel empty"


def test_heatmap_max_over_people_and_background():
    people = np.zeros((2, 1, 3), np.float32)
    people[0, 0] = [20, 20, 2]
    people[1, 0] = [28, 20, 1]  # one cell to the right, occluded-but-labelled counts too
    hm = encode_heatmaps(people, (6, 6), 8, 1.0)
    single = encode_heatmaps(people[:1], (6, 6), 8, 1.0)
    assert hm[0].max() <= 1.0 + 1e-6, "people are combined by max, not sum"
    assert np.all(hm[0] >= single[0] - 1e-7)
    np.testing.assert_allclose(hm[-1], 1.0 - hm[:-1].max(0), atol=1e-7)


def test_targets_empty_and_shapes():
    sk = PRESETS["coco17"]
    hm, paf = encode_targets(np.zeros((0, 17, 3)), sk, (256, 192))
    assert hm.shape == (18, 32, 24) and paf.shape == (2 * sk.num_limbs, 32, 24)
    assert np.all(hm[-1] == 1) and not hm[:-1].any() and not paf.any()
    hm, paf = encode_targets(person_grid(sk), sk, (256, 256), TargetConfig(stride=4, sigma=2.0))
    assert hm.shape == (18, 64, 64) and paf.shape == (38, 64, 64)


# ---------------------------------------------------------------- PAF targets
def test_paf_unit_vectors_point_from_a_to_b():
    s = 8
    people = np.zeros((1, 2, 3), np.float32)
    people[0, 0] = [4.8 * s, 10.7 * s, 2]  # cell coordinates (4.3, 10.2)
    people[0, 1] = [12.8 * s, 4.7 * s, 2]  # (12.3, 4.2): up and to the right, direction (0.8, -0.6)
    paf = encode_pafs(people, [(0, 1)], (16, 16), s, 1.0)
    norm = np.hypot(paf[0], paf[1])
    on = norm > 0
    assert on.sum() > 10
    np.testing.assert_allclose(norm[on], 1.0, atol=1e-5)
    np.testing.assert_allclose(paf[0][on], 0.8, atol=1e-5)
    np.testing.assert_allclose(paf[1][on], -0.6, atol=1e-5)
    assert on[10, 4] and on[4, 12] and on[7, 8], "both ends and the middle of the limb are covered"
    assert not on[15, 15] and not on[0, 0] and not on[10, 12], "cells far from the segment are empty"
    # Band: perpendicular distance <= width, and at most `width` past the ends.
    yy, xx = np.mgrid[0:16, 0:16].astype(float)
    d = np.array([0.8, -0.6])
    along = (xx - 4.3) * d[0] + (yy - 10.2) * d[1]
    perp = np.abs((xx - 4.3) * d[1] - (yy - 10.2) * d[0])
    expected = (perp <= 1.0) & (along >= -1.0) & (along <= 10.0 + 1.0)
    edge = (np.abs(perp - 1.0) < 1e-4) | (np.abs(along + 1.0) < 1e-4) | (np.abs(along - 11.0) < 1e-4)
    assert np.array_equal(on[~edge], expected[~edge]), "band = perpendicular and end margins of `width`"
    assert expected.sum() - edge.sum() > 20


def test_paf_requires_both_ends_and_averages_overlap():
    s = 8
    people = np.zeros((2, 2, 3), np.float32)
    people[0, 0], people[0, 1] = [20, 40, 2], [100, 40, 2]  # rightwards
    people[1, 0], people[1, 1] = [60, 44, 2], [60, 120, 2]  # downwards, crossing the first
    paf = encode_pafs(people, [(0, 1)], (16, 16), s, 1.0)
    assert paf[0, 4, 1] == pytest.approx(1.0) and paf[1, 4, 1] == pytest.approx(0.0)
    assert paf[1, 12, 7] == pytest.approx(1.0)
    np.testing.assert_allclose(paf[:, 4, 7], [0.5, 0.5], atol=1e-6)  # both limbs cover this cell
    people[1, 1, 2] = 0
    paf = encode_pafs(people, [(0, 1)], (16, 16), s, 1.0)
    assert paf[1].max() == 0 and paf[0, 4, 7] == pytest.approx(1.0), "half-labelled limb is skipped"
    people[0, 1, :2] = people[0, 0, :2]  # coincident ends have no direction
    assert not encode_pafs(people[:1], [(0, 1)], (16, 16), s, 1.0).any()


def test_encode_targets_is_fast():
    sk = PRESETS["coco17"]
    people = person_grid(sk)
    encode_targets(people, sk, (256, 256))
    times = []
    for _ in range(15):
        t = time.perf_counter()
        encode_targets(people, sk, (256, 256))
        times.append(time.perf_counter() - t)
    # Goal is < 2 ms on an idle core; the bound leaves room for a loaded CI machine.
    assert np.median(times) < 0.02


# ---------------------------------------------------------------- smoothing and confidences
def test_smoothing_matches_depthwise_conv_with_replicate_padding():
    x = torch.rand(2, 3, 7, 9)
    for sigma in (0.5, 1.0, 2.0):
        k = gaussian_kernel1d(sigma)
        r = (k.numel() - 1) // 2
        ref = F.pad(x.reshape(6, 1, 7, 9), (r, r, r, r), mode="replicate")
        ref = F.conv2d(F.conv2d(ref, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1)).reshape(2, 3, 7, 9)
        torch.testing.assert_close(smooth_heatmaps(x, sigma), ref, atol=1e-5, rtol=1e-5)
    assert smooth_heatmaps(x, 0) is x
    const = torch.full((1, 1, 5, 5), 0.7)
    torch.testing.assert_close(smooth_heatmaps(const, 1.0), const)


def test_peak_confidences_known_maxima():
    hm = torch.zeros(2, 4, 8, 8)  # K = 3 keypoints + background
    hm[0, 0] = 0.25  # constant map: smoothing keeps it
    hm[0, 1, 4, 4] = 0.9  # a single cell: with sigma 0 the max is exact
    hm[0, 3] = 5.0  # background must be ignored
    hm[1, 2] = torch.linspace(0, 1, 8)[None, :]  # ramp, max on the border column
    conf = peak_confidences(hm, 0.0)
    assert conf.shape == (2, 3)
    torch.testing.assert_close(conf[0], torch.tensor([0.25, 0.9, 0.0]))
    assert conf[1, 2].item() == pytest.approx(1.0)
    smoothed = peak_confidences(hm, 1.0)
    assert smoothed[0, 0].item() == pytest.approx(0.25)
    assert 0 < smoothed[0, 1].item() < 0.9, "a one-cell spike is spread by the smoothing"
    assert smoothed[0, 1].item() == pytest.approx(smooth_heatmaps(hm[:, :3], 1.0)[0, 1].max().item())
    assert peak_confidences(torch.zeros(1, 1, 4, 4), 1.0).shape == (1, 0)


# ---------------------------------------------------------------- peaks
def _gaussian_map(h, w, centres, sigma=1.0):
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    out = torch.zeros(h, w)
    for cx, cy, amp in centres:
        out = torch.maximum(out, amp * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))
    return out


def test_nms_suppresses_neighbours_and_respects_threshold():
    hm = torch.zeros(1, 2, 12, 12)
    hm[0, 0] = _gaussian_map(12, 12, [(3, 3, 1.0), (8, 8, 0.5), (8, 2, 0.04)])
    hm[0, 1, 5, 5] = 0.3
    hm[0, 1, 5, 6] = 0.2  # neighbour of a higher cell: suppressed
    p = find_peaks(hm, threshold=0.05)
    got = sorted(zip(p.channel.tolist(), p.x.round().tolist(), p.y.round().tolist(), strict=True))
    assert got == [(0, 3.0, 3.0), (0, 8.0, 8.0), (1, 5.0, 5.0)], "the 0.04 peak is below threshold"
    assert p.score.max().item() == pytest.approx(1.0)
    assert len(find_peaks(hm, threshold=0.6).x) == 1
    # A plateau (keypoint exactly on a cell border) gives one peak, not two.
    flat = torch.zeros(1, 1, 6, 6)
    flat[0, 0, 2, 2:4] = 0.8
    assert len(find_peaks(flat, 0.05).x) == 1


def test_subcell_refinement_recovers_gaussian_centres():
    rng = np.random.default_rng(0)
    centres = [(float(rng.uniform(2, 13)), float(rng.uniform(2, 13)), 1.0) for _ in range(30)]
    for cx, cy, a in centres:
        p = find_peaks(_gaussian_map(16, 16, [(cx, cy, a)])[None, None], 0.05)
        assert len(p.x) == 1
        assert abs(p.x.item() - cx) < 0.02 and abs(p.y.item() - cy) < 0.02
    # On the border, the one-sided fit (width from the other axis) is still close.
    p = find_peaks(_gaussian_map(16, 16, [(-0.3, 7.2, 1.0)])[None, None], 0.05)
    assert abs(p.x.item() + 0.3) < 0.05 and abs(p.y.item() - 7.2) < 0.02
    p = find_peaks(_gaussian_map(16, 16, [(6.6, 15.4, 1.0)])[None, None], 0.05)
    assert abs(p.x.item() - 6.6) < 0.02 and abs(p.y.item() - 15.4) < 0.05
    unrefined = find_peaks(_gaussian_map(16, 16, [(6.3, 7.6, 1.0)])[None, None], 0.05, refine=False)
    assert (unrefined.x.item(), unrefined.y.item()) == (6.0, 8.0)


def test_saddle_keeps_diagonal_neighbours_apart():
    two = _gaussian_map(12, 12, [(5.1, 5.0, 1.0), (6.0, 6.1, 0.95)])[None, None]
    assert len(find_peaks(two, 0.05, saddle=0.0).x) == 1, "square NMS merges diagonal neighbours"
    p = find_peaks(two, 0.05, saddle=0.9)
    assert len(p.x) == 2
    # A single round blob, wherever its centre, has no saddle: one peak.
    for cx, cy in ((5.4, 5.6), (5.5, 5.5), (5.9, 5.1)):
        blob = _gaussian_map(12, 12, [(cx, cy, 1.0)], sigma=1.5)[None, None]
        assert len(find_peaks(blob, 0.05, saddle=0.9).x) == 1


def test_find_peaks_empty_and_batched():
    p = find_peaks(torch.zeros(0, 3, 4, 4), 0.1)
    assert p.x.numel() == 0
    assert find_peaks(torch.zeros(2, 3, 4, 4), 0.1).x.numel() == 0
    hm = torch.zeros(3, 2, 8, 8)
    hm[2, 1, 6, 1] = 1.0
    p = find_peaks(hm, 0.1)
    assert p.batch.tolist() == [2] and p.channel.tolist() == [1]


# ---------------------------------------------------------------- limb scores, matching, assembly
def test_limb_scores_line_integral_and_prior():
    s = 8
    people = np.zeros((1, 2, 3), np.float32)
    people[0, 0], people[0, 1] = [20, 60, 2], [100, 60, 2]
    paf = encode_pafs(people, [(0, 1)], (16, 16), s, 1.0)[None]
    a = people[0, 0, :2] / s - 0.5
    b = people[0, 1, :2] / s - 0.5
    pa = np.stack([a, b, a, a])
    pb = np.stack([b, a, a + (0, 5), b])
    score, ratio = limb_scores(paf, np.zeros(4, int), np.zeros(4, int), pa, pb, 10, 0.05, 160, s)
    assert score[0] == pytest.approx(1.0, abs=1e-5) and ratio[0] == 1.0
    assert score[1] < -0.9 and ratio[1] == 0.0, "reversed direction"
    assert ratio[2] < 0.5, "perpendicular candidate leaves the field"
    # The 80 px limb is longer than half of a 100 px input: prior 0.5 * 100 / 80 - 1 < 0 is added.
    small, _ = limb_scores(paf, np.zeros(1, int), np.zeros(1, int), pa[:1], pb[:1], 10, 0.05, 100, s)
    assert small[0] == pytest.approx(1.0 + 0.5 * 100 / 80 - 1.0, abs=1e-5)


def test_limb_candidates_cartesian_product_per_image():
    # peaks sorted by key = batch * K + channel; K = 2, limb (0, 1), 2 images
    key = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    b, limb, ia, ib = limb_candidates(key, np.array([[0, 1]]), 2, 2)
    pairs = sorted(zip(b.tolist(), ia.tolist(), ib.tolist(), strict=True))
    assert pairs == [(0, i, j) for i in (0, 1) for j in (2, 3, 4)] + [(1, 5, 6), (1, 5, 7)]
    assert not limb.any()


def _sequential_greedy(limb, ia, ib, score):
    keep = np.zeros(len(score), bool)
    used = set()
    for i in np.argsort(-score, kind="stable"):
        if (limb[i], "a", ia[i]) in used or (limb[i], "b", ib[i]) in used:
            continue
        keep[i] = True
        used |= {(limb[i], "a", ia[i]), (limb[i], "b", ib[i])}
    return keep


def test_greedy_match_equals_sequential_greedy():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 40))
        limb, ia, ib = rng.integers(0, 3, m), rng.integers(0, 6, m), rng.integers(6, 12, m)
        score = rng.random(m).round(1)  # with ties
        np.testing.assert_array_equal(
            greedy_match(limb, ia, ib, score), _sequential_greedy(limb, ia, ib, score)
        )


def test_limb_order_grows_from_the_centre():
    sk = PRESETS["lsp14"]
    order = limb_order(sk.num_keypoints, sk.limbs)
    assert sorted(order.tolist()) == list(range(sk.num_limbs))
    neck = sk.index("neck")
    first = [sk.limbs[i] for i in order[:5]]
    assert all(neck in limb for limb in first), "the neck is the centre of lsp14"
    assert limb_order(1, ()).size == 0


def test_assemble_cycle_merge_and_conflict():
    # Triangle skeleton 0-1, 1-2, 2-0 (a cycle); peaks: 0,1,2 one person, 3 another part 0.
    limbs = np.array([[0, 1], [1, 2], [2, 0]])
    channel = np.array([0, 1, 2, 0])
    pscore = np.array([1.0, 1.0, 1.0, 0.5])
    # 0-1 starts a person, 2-0 attaches 2, 1-2 closes the cycle (score only), 2-3 conflicts on slot 0.
    cl = np.array([0, 2, 1, 2])
    ca = np.array([0, 2, 1, 2])
    cb = np.array([1, 0, 2, 3])
    cs = np.array([0.9, 0.8, 0.7, 0.6])
    rows, scores = assemble_people(3, limbs, channel, pscore, cl, ca, cb, cs, 3, 0.0)
    assert rows.tolist() == [[0, 1, 2]]
    assert scores[0] == pytest.approx((3.0 + 0.9 + 0.8 + 0.7) / 3)
    # Fragments that share no keypoint slot are merged: chain 0-1, 2-3, then the link 1-2.
    chain = np.array([[0, 1], [2, 3], [1, 2]])
    rows, scores = assemble_people(
        4, chain, np.arange(4), np.ones(4), np.array([0, 1, 2]), np.array([0, 2, 1]), np.array([1, 3, 2]),
        np.array([0.5, 0.5, 0.5]), 4, 0.0,
    )  # fmt: skip
    assert rows.tolist() == [[0, 1, 2, 3]] and scores[0] == pytest.approx((4 + 1.5) / 4)
    channel = np.array([0, 1, 2, 1])
    rows, scores = assemble_people(
        3, limbs, channel, np.ones(4), np.array([0, 1, 2]), np.array([0, 3, 2]), np.array([1, 2, 0]),
        np.ones(3), 2, 0.0,
    )  # fmt: skip
    # 0-1 makes A={0,1}; 3-2 makes B={3(ch1),2}; 2-0 would merge A and B but both hold channel 1: refused.
    assert sorted(map(tuple, rows.tolist())) == [(-1, 3, 2), (0, 1, -1)]
    assert len(assemble_people(3, limbs, channel, np.ones(4), cl[:0], ca[:0], cb[:0], cs[:0], 2, 0.0)[0]) == 0


def test_assemble_thresholds_and_single_parts():
    limbs = np.array([[0, 1]])
    args = (np.array([0, 1, 0]), np.array([0.9, 0.9, 0.4]), np.array([0]), np.array([0]), np.array([1]))
    rows, scores = assemble_people(2, limbs, *args, np.array([0.5]), 2, 0.0)
    assert rows.tolist() == [[0, 1]] and scores[0] == pytest.approx((0.9 + 0.9 + 0.5) / 2)
    assert len(assemble_people(2, limbs, *args, np.array([0.5]), 2, 1.2)[0]) == 0, "score threshold"
    assert len(assemble_people(2, limbs, *args, np.array([0.5]), 3, 0.0)[0]) == 1, "min_parts capped at K"
    rows, scores = assemble_people(2, limbs, *args, np.array([0.5]), 1, 0.3)
    assert rows.tolist() == [[0, 1], [2, -1]], "with min_parts 1 a lone peak is a person"
