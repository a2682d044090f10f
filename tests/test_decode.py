"""Decoder: encode -> decode round trips (hand-made and real multi-person photos), edge cases, speed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from activepose.config import DecoderConfig
from activepose.errors import ConfigError
from activepose.pose.coco import load_coco
from activepose.pose.decode import Decoder
from activepose.pose.fields import encode_targets
from activepose.pose.skeleton import PRESETS, Skeleton

from .conftest import shared_file
from .test_fields import make_person, person_grid

STRIDE = 8


def decode_targets(people: np.ndarray, skeleton: Skeleton, hw=(256, 256), cfg=DecoderConfig()):
    """Return the decoder's (keypoints, scores) for the ground-truth targets of `people`."""
    hm, paf = encode_targets(people, skeleton, hw)
    (out,) = Decoder(skeleton, cfg)(torch.from_numpy(hm)[None], torch.from_numpy(paf)[None])
    return out


def largest_component(skeleton: Skeleton, labelled: np.ndarray) -> np.ndarray:
    """Return the mask of the largest set of labelled keypoints joined by labelled limbs."""
    parent = list(range(skeleton.num_keypoints))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in skeleton.limbs:
        if labelled[a] and labelled[b]:
            parent[find(a)] = find(b)
    roots = Counter(find(k) for k in np.flatnonzero(labelled))
    if not roots:
        return np.zeros_like(labelled, dtype=bool)
    root = roots.most_common(1)[0][0]
    return np.array([bool(labelled[k]) and find(k) == root for k in range(skeleton.num_keypoints)])


def match_people(
    gt: np.ndarray, masks: list[np.ndarray], decoded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (GT index, decoded index) pairs minimising the median keypoint error, and that error matrix.

    The error of decoded person j for GT person i is the median over i's keypoints in `masks[i]` of the
    distance to j's same keypoint (missing in j: 1e6).
    """
    err = np.full((len(gt), len(decoded)), 1e6)
    for i, (g, m) in enumerate(zip(gt, masks, strict=True)):
        for j, d in enumerate(decoded):
            e = np.hypot(*(d[m, :2] - g[m, :2]).T)
            e[d[m, 2] <= 0] = 1e6
            err[i, j] = np.median(e)
    if not len(gt) or not len(decoded):
        return np.zeros((0, 2), int), err
    rows, cols = linear_sum_assignment(err)
    return np.stack([rows, cols], 1), err


def assert_exact_round_trip(people: np.ndarray, skeleton: Skeleton, kps: np.ndarray, scores: np.ndarray):
    """Every person decoded once, with exactly its keypoints, each within 0.5 * stride, none mixed."""
    assert kps.shape == (len(people), skeleton.num_keypoints, 3) and kps.dtype == np.float32
    assert scores.shape == (len(people),) and np.all(np.diff(scores) <= 0), "sorted by score"
    masks = [largest_component(skeleton, p[:, 2] > 0) for p in people]
    pairs, _ = match_people(people, masks, kps)
    for i, j in pairs:
        g, d = people[i], kps[j]
        assert np.array_equal(d[:, 2] > 0, masks[i]), f"person {i}: wrong set of keypoints"
        err = np.hypot(*(d[masks[i], :2] - g[masks[i], :2]).T)
        assert err.max() < 0.5 * STRIDE, f"person {i}: keypoint error {err.max():.2f} px"
        # Not mixed up: each decoded keypoint is closer to this person's keypoint than to anyone else's.
        for k in np.flatnonzero(masks[i]):
            others = [
                np.hypot(*(d[k, :2] - o[k, :2])) for n, o in enumerate(people) if n != i and o[k, 2] > 0
            ]
            assert all(err_k > np.hypot(*(d[k, :2] - g[k, :2])) for err_k in others)


@pytest.mark.parametrize("name", ["lsp14", "coco17", "coco18"])
def test_round_trip_hand_made_people(name):
    sk = PRESETS[name]
    people = person_grid(sk)
    kps, scores = decode_targets(people, sk)
    assert_exact_round_trip(people, sk, kps, scores)
    assert np.all(scores > 1.0), "clean targets: peak + connection scores near 1 per part"


@pytest.mark.parametrize("name", ["lsp14", "coco17", "coco18"])
def test_round_trip_crossing_arms_and_aspect(name):
    sk = PRESETS[name]
    # Side by side with their arms crossing, plus a small person in front; non-square input.
    people = np.stack(
        [
            make_person(sk, 100, 120, 150, seed=5),
            make_person(sk, 148, 122, 145, seed=6),
            make_person(sk, 40, 140, 60, missing=("right_wrist", "right_elbow"), seed=7),
        ]
    )
    kps, scores = decode_targets(people, sk, hw=(208, 192))
    assert_exact_round_trip(people, sk, kps, scores)


def test_batched_decoding_matches_single_images():
    sk = PRESETS["coco17"]
    a, b = person_grid(sk), person_grid(sk)[1:3] + np.array([10, -5, 0], np.float32)
    ta, tb = encode_targets(a, sk, (256, 256)), encode_targets(b, sk, (256, 256))
    hm = torch.from_numpy(np.stack([ta[0], np.zeros_like(ta[0]), tb[0]]))
    paf = torch.from_numpy(np.stack([ta[1], np.zeros_like(ta[1]), tb[1]]))
    dec = Decoder(sk)
    out = dec(hm, paf)
    assert len(out) == 3
    assert out[1][0].shape == (0, 17, 3) and out[1][1].shape == (0,)
    for got, single in zip([out[0], out[2]], [dec(hm[:1], paf[:1])[0], dec(hm[2:], paf[2:])[0]], strict=True):
        np.testing.assert_allclose(got[0], single[0])
        np.testing.assert_allclose(got[1], single[1])
    assert len(out[0][0]) == 4 and len(out[2][0]) == 2


def test_empty_inputs():
    sk = PRESETS["lsp14"]
    dec = Decoder(sk)
    nl = 2 * sk.num_limbs
    out = dec(torch.zeros(2, 15, 8, 8), torch.zeros(2, nl, 8, 8))
    for kps, scores in out:
        assert kps.shape == (0, 14, 3) and kps.dtype == np.float32 and scores.shape == (0,)
    assert dec(torch.zeros(0, 15, 8, 8), torch.zeros(0, nl, 8, 8)) == []
    with pytest.raises(ValueError):
        dec(torch.zeros(1, 14, 8, 8), torch.zeros(1, nl, 8, 8))
    with pytest.raises(ValueError):
        dec(torch.zeros(1, 15, 8, 8), torch.zeros(1, nl - 2, 8, 8))


def test_single_keypoint_skeleton():
    sk = Skeleton("dot", ("centre",), ())
    people = np.array([[[40, 40, 2]], [[100, 60, 2]], [[0, 0, 0]]], np.float32)
    kps, scores = decode_targets(people, sk, hw=(128, 128))
    assert kps.shape == (2, 1, 3)
    found = sorted(map(tuple, np.round(kps[:, 0, :2]).tolist()))
    assert found == [(40.0, 40.0), (100.0, 60.0)]
    kps, _ = decode_targets(np.zeros((0, 1, 3), np.float32), sk, hw=(64, 64))
    assert kps.shape == (0, 1, 3)


def test_thresholds_are_respected():
    sk = PRESETS["lsp14"]
    keep = ("neck", "head_top", "right_shoulder")  # 3 connected parts only
    small = make_person(sk, 60, 100, 100)
    small[[k for k, n in enumerate(sk.keypoints) if n not in keep]] = 0
    people = np.stack([make_person(sk, 170, 120, 120), small])
    assert len(decode_targets(people, sk)[0]) == 1, "min_parts = 4 drops the 3-part person"
    assert len(decode_targets(people, sk, cfg=DecoderConfig(min_parts=3))[0]) == 2
    assert len(decode_targets(people, sk, cfg=DecoderConfig(min_person_score=5.0))[0]) == 0
    assert len(decode_targets(people, sk, cfg=DecoderConfig(max_people=1, min_parts=3))[0]) == 1
    hm, paf = encode_targets(people, sk, (256, 256))
    dec = Decoder(sk)
    faint = dec(torch.from_numpy(hm * 0.04)[None], torch.from_numpy(paf)[None])[0]
    assert len(faint[0]) == 0, "peaks below peak_threshold are ignored"
    weak_paf = dec(torch.from_numpy(hm)[None], torch.from_numpy(paf * 0.04)[None])[0]
    assert len(weak_paf[0]) == 0, "PAF samples below paf_score_threshold make no limb"


def test_upsampled_peaks_still_accurate():
    sk = PRESETS["coco17"]
    people = person_grid(sk)
    kps, scores = decode_targets(people, sk, cfg=DecoderConfig(upsample=2))
    assert_exact_round_trip(people, sk, kps, scores)


def round_trip_counts(gt: np.ndarray, sk: Skeleton, hw: tuple[int, int], dec: Decoder):
    """Return (resolvable GT indices, recovered GT indices, phantom decoded indices) for one image.

    A GT person is resolvable when (1) the largest group of its labelled keypoints joined by labelled limbs
    has >= min_parts (4) keypoints (targets have no PAF between the other groups, so no decoder can join
    them), (2) fewer than half of that group's keypoints lie within 1.5 cells (12 px) of the same
    keypoint of another person (two people's joints in one NMS window cannot give two peaks).
    It is recovered when its one-to-one matched decoded person has a median error over that group
    below 0.5 * stride (4 px), missing keypoints counting as infinite. A decoded person is a phantom when
    fewer than half of its keypoints lie within 4 px of one GT person's.
    """
    hm, paf = encode_targets(gt, sk, hw)
    ((kps, _),) = dec(torch.from_numpy(hm)[None], torch.from_numpy(paf)[None])
    masks = [largest_component(sk, g[:, 2] > 0) for g in gt]
    resolvable = set()
    for i, (g, m) in enumerate(zip(gt, masks, strict=True)):
        crowded = np.zeros(sk.num_keypoints, bool)
        for n, o in enumerate(gt):
            if n != i:
                crowded |= m & (o[:, 2] > 0) & (np.hypot(*(g[:, :2] - o[:, :2]).T) < 1.5 * STRIDE)
        if m.sum() >= 4 and crowded[m].mean() < 0.5:
            resolvable.add(i)
    pairs, err = match_people(gt, masks, kps)
    good = {int(i) for i, j in pairs if err[i, j] < 0.5 * STRIDE}
    phantoms = [j for j, d in enumerate(kps) if max((_overlap(d, g) for g in gt), default=0.0) < 0.5]
    return resolvable, resolvable & good, phantoms


def test_sports_multi_round_trip():
    """Every resolvable person of the real multi-person photos is recovered from its own targets.

    Images are scaled so that the long side is 256 (input size rounded up to a multiple of 8); see
    `round_trip_counts` for what resolvable and recovered mean.
    """
    data = load_coco(shared_file("sports_multi", "annotations.json"))
    sk = data.skeleton
    dec = Decoder(sk)
    counted = recovered = 0
    failures = []
    for frame in data:
        scale = 256 / max(frame.width, frame.height)
        gt = frame.keypoints.copy()
        gt[..., :2] *= scale
        hw = (int(np.ceil(frame.height * scale / 8) * 8), int(np.ceil(frame.width * scale / 8) * 8))
        target, good, phantoms = round_trip_counts(gt, sk, hw, dec)
        counted += len(target)
        recovered += len(good)
        failures += [(frame.image_id, i) for i in sorted(target - good)]
        assert not phantoms, f"image {frame.image_id}: decoded people {phantoms} match nobody"
    assert counted >= 150, "the data set should have ~160 resolvable people"
    assert recovered == counted, f"recovered {recovered}/{counted}; missed (image id, person): {failures}"


@pytest.mark.parametrize("name", ["lsp14", "coco17", "coco18"])
def test_synthetic_scenes_round_trip(name):
    """Every resolvable person of generated scenes (0-4 people, overlaps) is recovered, but collinear cases.

    The generator overlaps people on purpose; a person whose joint lies on another's same-type limb is
    ambiguous in the targets themselves (see `_in_foreign_band`) and may be assembled wrongly.
    """
    from activepose.config import SyntheticConfig
    from activepose.pose.synthetic import render_scene

    sk = PRESETS[name]
    dec = Decoder(sk)
    rng = np.random.default_rng(7)
    cfg = SyntheticConfig(image_size=(256, 256))
    counted = 0
    missed = []
    for n in range(30):
        _, gt = render_scene(rng, sk, cfg)
        target, good, phantoms = round_trip_counts(gt, sk, (256, 256), dec)
        counted += len(target)
        missed += [(n, i, _in_foreign_band(i, gt, sk)) for i in sorted(target - good)]
        assert not phantoms, f"scene {n}: decoded people {phantoms} match nobody"
    assert counted >= 50, "30 scenes of 0-4 people should hold dozens of resolvable people"
    # Every miss must be a person lying on another's same-type limb (ambiguous in the targets), and rare.
    assert all(ambiguous for *_, ambiguous in missed), f"unexplained misses (scene, person): {missed}"
    assert len(missed) <= 0.05 * counted, f"missed {len(missed)}/{counted}"


def _in_foreign_band(i: int, gt: np.ndarray, sk: Skeleton) -> bool:
    """Return whether a keypoint of person i lies within 1 cell of another person's limb ending at its type.

    Then the targets themselves score the wrong connection (the other person's limb start to this
    person's joint) about as high as the right one: OpenPose's collinear ambiguity, decided by greedy order.
    """
    for n, o in enumerate(gt):
        if n == i:
            continue
        for a, b in sk.limbs:
            if o[a, 2] <= 0 or o[b, 2] <= 0:
                continue
            seg = o[b, :2] - o[a, :2]
            for k in (a, b):
                if gt[i, k, 2] <= 0:
                    continue
                t = np.clip(np.dot(gt[i, k, :2] - o[a, :2], seg) / max(np.dot(seg, seg), 1e-9), 0, 1)
                near = np.hypot(*(o[a, :2] + t * seg - gt[i, k, :2])) < STRIDE
                if near and np.hypot(*(gt[i, k, :2] - o[k, :2])) >= STRIDE:
                    return True
    return False


def _overlap(decoded: np.ndarray, gt: np.ndarray) -> float:
    """Return the fraction of the decoded person's keypoints within 0.5 * stride of the GT person's."""
    has = decoded[:, 2] > 0
    close = has & (gt[:, 2] > 0) & (np.hypot(*(decoded[:, :2] - gt[:, :2]).T) < 0.5 * STRIDE)
    return close.sum() / max(has.sum(), 1)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(min_parts=0), r"^--min-parts must be >= 1, got 0$"),
        (dict(min_person_score=-0.1), r"^--min-score must be >= 0, got -0.1$"),
        (dict(peak_threshold=1.5), r"^peak_threshold must be in \[0, 1\], got 1.5$"),
        (dict(paf_min_ratio=-0.2), r"^paf_min_ratio must be in \[0, 1\], got -0.2$"),
        (dict(nms_kernel=4), r"^nms_kernel must be an odd number >= 3, got 4$"),
        (dict(upsample=0), r"^upsample must be >= 1, got 0$"),
        (dict(paf_samples=1), r"^paf_samples must be >= 2, got 1$"),
        (dict(max_people=0), r"^max_people must be >= 1, got 0$"),
        (dict(smooth_sigma=-1.0), r"^smooth_sigma must be >= 0, got -1.0$"),
        (
            dict(min_parts=0, max_people=0),
            r"^--min-parts must be >= 1, got 0; max_people must be >= 1, got 0$",
        ),
    ],
)
def test_decoder_config_errors_name_the_option(kw, message):
    with pytest.raises(ConfigError, match=message):
        DecoderConfig(**kw)
    assert DecoderConfig(min_parts=1, peak_threshold=0.0, min_person_score=5.0).min_parts == 1
