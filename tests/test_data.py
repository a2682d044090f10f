"""Tests of letterboxing, augmentation and the PoseDataset."""

from __future__ import annotations

import importlib.metadata
import pickle

import numpy as np
import pytest
import torch

from activepose.config import AugmentConfig, SyntheticConfig, TargetConfig
from activepose.fileio import read_image
from activepose.pose.coco import load_coco
from activepose.pose.data import PoseDataset, build_augmentation, collate, letterbox
from activepose.pose.skeleton import PRESETS
from activepose.pose.synthetic import make_synthetic_coco

SK = PRESETS["lsp14"]
K = SK.num_keypoints
# Distinct colours, one per keypoint (far apart in RGB so interpolation at a blob's centre cannot confuse them).
_LEVELS = (0, 128, 255)
PALETTE = np.array(
    [
        (r, g, b)
        for r in _LEVELS
        for g in _LEVELS
        for b in _LEVELS
        if (r, g, b) not in ((0, 0, 0), (128, 128, 128))
    ][:K],
    np.uint8,
)


def _dotted(w: int, h: int, people: np.ndarray, radius: int = 5) -> np.ndarray:
    """Return a gray image with a disc of PALETTE[k] at every labelled keypoint k."""
    import cv2

    img = np.full((h, w, 3), 90, np.uint8)
    for person in people:
        for k, (x, y, v) in enumerate(person):
            if v > 0:
                # continuous (x, y) -> cv2 pixel-centre coordinates (x - 0.5, y - 0.5), 1/16 px precision
                c = (int(round((x - 0.5) * 16)), int(round((y - 0.5) * 16)))
                cv2.circle(img, c, radius * 16, tuple(int(u) for u in PALETTE[k]), -1, cv2.LINE_8, 4)
    return img


def _grid_person(w: int, h: int, rng: np.random.Generator, margin: float = 20) -> np.ndarray:
    """Return (1, K, 3) keypoints spread over the image, at least 12 px apart."""
    pts = []
    while len(pts) < K:
        p = rng.uniform([margin, margin], [w - margin, h - margin])
        if all(np.hypot(*(p - q)) >= 12 for q in pts):
            pts.append(p)
    return np.concatenate([np.array(pts), np.full((K, 1), 2.0)], 1)[None].astype(np.float32)


def _colour_at(img: np.ndarray, x: float, y: float) -> int:
    """Return the index of the PALETTE colour nearest to the pixel containing (x, y)."""
    px = img[int(y), int(x)].astype(np.int32)
    return int(np.argmin(((PALETTE.astype(np.int32) - px) ** 2).sum(1)))


# --- environment -----------------------------------------------------------------------------------
def test_single_opencv_distribution():
    import cv2

    assert cv2.__version__
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    opencv = sorted(n for n in names if n.startswith("opencv"))
    assert len(opencv) == 1, f"expected exactly one OpenCV distribution, found {opencv}"


# --- letterbox -------------------------------------------------------------------------------------
@pytest.mark.parametrize("w,h,size", [(200, 100, 64), (90, 150, 64), (30, 20, 64)])
def test_letterbox_geometry(w, h, size):
    kp = np.array([[[0.37 * w, 0.61 * h, 2]]], np.float32)
    big = max(1, round(min(w, h) / 12))
    img = np.zeros((h, w, 3), np.uint8)
    y0, x0 = int(kp[0, 0, 1]), int(kp[0, 0, 0])
    img[y0 - big : y0 + big, x0 - big : x0 + big] = 255  # a square centred on the keypoint
    out, scale = letterbox(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(size / max(w, h))
    nw, nh = round(w * scale), round(h * scale)
    assert not out[nh:].any() and not out[:, nw:].any()  # padding is bottom/right, zeros
    assert out[:nh, :nw].any()
    g = out[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    cx, cy = (g * (xs + 0.5)).sum() / g.sum(), (g * (ys + 0.5)).sum() / g.sum()
    # The square's centre is kp (the square spans [x0 - big, x0 + big) around x0 = int(kp)).
    assert cx == pytest.approx(x0 * scale, abs=0.6) and cy == pytest.approx(y0 * scale, abs=0.6)


def test_letterbox_accepts_gray_2d():
    out, scale = letterbox(np.full((40, 20), 7, np.uint8), 32)
    assert out.shape == (32, 32, 3) and scale == pytest.approx(0.8) and (out[:32, :16] == 7).all()


# --- augmentation ----------------------------------------------------------------------------------
def test_geometry_keeps_keypoints_on_content():
    aug = build_augmentation(AugmentConfig.geometry_only(hflip=0.0), SK)
    checked = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        people = _grid_person(128, 128, rng)
        img = _dotted(128, 128, people)
        out, moved = aug(img, people, np.random.default_rng(100 + seed))
        assert out.shape == img.shape
        for person in moved:
            for k, (x, y, v) in enumerate(person):
                if v > 0:
                    assert _colour_at(out, x, y) == k
                    checked += 1
    assert checked > 50


def test_geometry_is_subpixel_accurate():
    aug = build_augmentation(AugmentConfig.geometry_only(hflip=0.0, scale=(1.3, 1.4)), SK)
    for seed in range(4):
        img = np.zeros((96, 96, 3), np.uint8)
        img[40:44, 50:54] = 255  # a 4x4 square centred on (52, 42)
        people = np.zeros((1, K, 3), np.float32)
        people[0, 0] = [52.0, 42.0, 2]
        out, moved = aug(img, people, np.random.default_rng(seed))
        g = out[..., 0].astype(np.float64)
        ys, xs = np.mgrid[:96, :96]
        centroid = [(g * (xs + 0.5)).sum() / g.sum(), (g * (ys + 0.5)).sum() / g.sum()]
        assert moved[0, 0, :2] == pytest.approx(centroid, abs=0.1)


def test_hflip_swaps_left_and_right():
    cfg = AugmentConfig.geometry_only(rotate=0.0, shift=0.0, scale=(1.0, 1.0), hflip=1.0)
    aug = build_augmentation(cfg, SK)
    people = _grid_person(100, 80, np.random.default_rng(0), margin=10)
    img = _dotted(100, 80, people)
    out, flipped = aug(img, people, np.random.default_rng(0))
    assert np.array_equal(out, img[:, ::-1])
    ls, rs = SK.index("left_shoulder"), SK.index("right_shoulder")
    # The new left shoulder is the mirrored old right shoulder (and vice versa).
    assert flipped[0, ls, :2] == pytest.approx([100 - people[0, rs, 0], people[0, rs, 1]])
    assert flipped[0, rs, :2] == pytest.approx([100 - people[0, ls, 0], people[0, ls, 1]])
    perm = SK.flip_permutation()
    for k, (x, y, _) in enumerate(flipped[0]):  # under label k lies the dot drawn for keypoint perm[k]
        assert _colour_at(out, x, y) == perm[k]


def test_keypoints_leaving_the_image_become_unlabelled():
    cfg = AugmentConfig.geometry_only(rotate=0.0, shift=0.0, scale=(3.0, 3.0), hflip=0.0)
    aug = build_augmentation(cfg, SK)
    people = np.zeros((2, K, 3), np.float32)
    people[0, :, 0] = np.linspace(2, 98, K)  # a row across the image: its ends leave under a 3x zoom
    people[0, :, 1] = 50
    people[0, :, 2] = 2
    people[0, 3, 2] = 0  # unlabelled stays unlabelled
    people[1, :2] = [[3, 3, 2], [96, 97, 1]]  # only corner keypoints: the whole person leaves
    out, moved = aug(np.zeros((100, 100, 3), np.uint8), people, np.random.default_rng(0))
    assert len(moved) == 1  # the second person had nothing left and is dropped
    expect_x = 50 + 3 * (people[0, :, 0] - 50)
    inside = (expect_x >= 0) & (expect_x < 100) & (people[0, :, 2] > 0)
    assert 0 < inside.sum() < K
    assert np.array_equal(moved[0, :, 2] > 0, inside)
    assert (moved[0, ~inside] == 0).all()
    assert moved[0, inside, 0] == pytest.approx(expect_x[inside], abs=1e-3)


def test_augmentation_reproducible_with_rng_and_varies_without():
    aug = build_augmentation(AugmentConfig(), SK)
    people = _grid_person(96, 96, np.random.default_rng(1))
    img = _dotted(96, 96, people)
    a = aug(img, people, np.random.default_rng(7))
    b = aug(img, people, np.random.default_rng(7))
    c = aug(img, people, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(aug(img, people)[0], aug(img, people)[0])  # fresh entropy per call


def test_colour_augmentation_changes_only_intensity():
    cfg = AugmentConfig(
        rotate=0.0, shift=0.0, scale=(1.0, 1.0), hflip=0.0, brightness=(1.3, 1.3), contrast=(1, 1)
    )
    img = np.full((32, 32, 3), 100, np.uint8)
    out, _ = build_augmentation(cfg, SK)(img, np.zeros((0, K, 3)), np.random.default_rng(0))
    assert np.abs(out.astype(int) - 130).max() <= 1  # multiplicative brightness


def test_grayscale_augmentation_gives_equal_channels():
    people = _grid_person(64, 64, np.random.default_rng(2), margin=8)
    img = _dotted(64, 64, people, radius=3)
    out, _ = build_augmentation(AugmentConfig(grayscale=True), SK)(img, people, np.random.default_rng(0))
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert out.std() > 0


# --- dataset ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    cfg = SyntheticConfig(num_images=6, image_size=(96, 72), size_jitter=0.2, min_people=1, max_people=3)
    return load_coco(make_synthetic_coco(tmp_path_factory.mktemp("syn"), "lsp14", cfg, seed=11))


def _check_peaks(heatmaps: np.ndarray, people: np.ndarray, stride: int = 8) -> int:
    """Assert the heatmap is high (>= exp(-0.25)) in the cell of every labelled keypoint; return their count."""
    n = 0
    for person in people:
        for k, (x, y, v) in enumerate(person):
            if v > 0:
                assert heatmaps[k, int(y // stride), int(x // stride)] >= np.exp(-0.25) - 1e-4
                n += 1
    return n


def test_dataset_items(tiny_coco):
    ds = PoseDataset(tiny_coco, input_size=64)
    assert len(ds) == 6
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["heatmaps"].shape == (K + 1, 8, 8) and item["heatmaps"].dtype == torch.float32
    assert item["pafs"].shape == (2 * SK.num_limbs, 8, 8) and item["pafs"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert isinstance(item["image_id"], int) and item["image_id"] == tiny_coco.image_ids[0]
    f = tiny_coco.frames[0]
    assert item["scale"] == pytest.approx(64 / max(f.width, f.height))
    # Without augmentation the input is the letterbox and the targets peak at the scaled keypoints.
    canvas, _ = letterbox(read_image(tiny_coco.image_path(f)), 64)
    assert torch.allclose(item["image"], torch.from_numpy(canvas).permute(2, 0, 1).float() / 255)
    people = f.keypoints.copy()
    people[..., :2] *= item["scale"]
    assert _check_peaks(item["heatmaps"].numpy(), people) > 0


def test_augmented_dataset_targets_match_keypoints(tiny_coco):
    ds = PoseDataset(tiny_coco, input_size=64, augment=AugmentConfig(), targets=TargetConfig())
    n = 0
    for i in range(len(ds)):
        torch.manual_seed(i)
        item = ds[i]
        torch.manual_seed(i)
        canvas, people, _ = ds.sample(i)  # same torch draws -> the same augmentation
        assert torch.allclose(item["image"], torch.from_numpy(canvas).permute(2, 0, 1).float() / 255)
        n += _check_peaks(item["heatmaps"].numpy(), people)
        assert float(item["heatmaps"][:-1].max()) <= 1.0 + 1e-6
    assert n > 0


def test_dataset_subset_and_grayscale(tiny_coco):
    ids = tiny_coco.image_ids[4:1:-1]
    ds = PoseDataset(tiny_coco, input_size=64, augment=AugmentConfig(), image_ids=ids, grayscale=True)
    assert len(ds) == 3 and [ds[i]["image_id"] for i in range(3)] == ids
    img = ds[0]["image"]
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])


def test_dataset_with_workers_draws_distinct_augmentations(tiny_coco):
    ids = [tiny_coco.image_ids[0]] * 4  # the same image four times: every draw must differ
    ds = PoseDataset(tiny_coco, input_size=64, augment=AugmentConfig(), image_ids=ids)
    ds[0]  # build the augmentation pipeline before pickling
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[0]["image"].shape == (3, 64, 64)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(2, 3, 64, 64)] * 2
    images = torch.cat([b["image"] for b in batches])
    assert all(not torch.equal(images[i], images[j]) for i in range(4) for j in range(i + 1, 4))


def test_input_size_must_be_multiple_of_stride(tiny_coco):
    with pytest.raises(ValueError, match="multiple"):
        PoseDataset(tiny_coco, input_size=60)
