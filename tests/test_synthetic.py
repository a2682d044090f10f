"""Tests of the synthetic multi-person scene generator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from activepose.config import SyntheticConfig
from activepose.errors import SyntheticError
from activepose.pose.coco import load_coco
from activepose.pose.skeleton import PRESETS, Skeleton
from activepose.pose.synthetic import canonical_name, make_synthetic_coco, render_scene

TINY = SyntheticConfig(num_images=4, image_size=(80, 64), max_people=3)


def _scenes(skeleton, cfg, n=12, seed=0):
    return [render_scene(np.random.default_rng([seed, i]), skeleton, cfg) for i in range(n)]


def test_render_scene_is_deterministic_per_seed():
    a_img, a_people = render_scene(np.random.default_rng(5), "lsp14", TINY)
    b_img, b_people = render_scene(np.random.default_rng(5), "lsp14", TINY)
    c_img, _ = render_scene(np.random.default_rng(6), "lsp14", TINY)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_people, b_people)
    assert not np.array_equal(a_img, c_img)


def test_make_synthetic_coco_same_bytes_for_same_seed(tmp_path):
    paths = [
        make_synthetic_coco(tmp_path / name, "lsp14", TINY, seed=s)
        for name, s in (("a", 1), ("b", 1), ("c", 2))
    ]
    a, b, c = (p.parent for p in paths)
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    assert (a / "annotations.json").read_bytes() != (c / "annotations.json").read_bytes()
    for f in sorted((a / "images").iterdir()):
        assert f.read_bytes() == (b / "images" / f.name).read_bytes()
    assert any(f.read_bytes() != (c / "images" / f.name).read_bytes() for f in (a / "images").iterdir())


@pytest.mark.parametrize("name", ["lsp14", "coco17", "coco18"])
def test_generated_coco_is_valid_for_presets(tmp_path, name):
    cfg = SyntheticConfig(num_images=5, image_size=(72, 56), size_jitter=0.25, max_people=3)
    path = make_synthetic_coco(tmp_path / name, name, cfg, seed=3)
    ds = load_coco(path, read_image_headers=True)  # also checks every file's size against the JSON
    assert ds.skeleton.keypoints == PRESETS[name].keypoints
    assert ds.image_ids == [1, 2, 3, 4, 5]
    raw = json.loads(path.read_text())
    assert all(
        not img["file_name"].startswith("/") and (path.parent / img["file_name"]).is_file()
        for img in raw["images"]
    )
    assert len({(f.width, f.height) for f in ds.frames}) > 1  # size_jitter varies the size
    for f in ds.frames:
        assert 0 <= f.num_people <= cfg.max_people
        assert f.keypoints.shape[1:] == (PRESETS[name].num_keypoints, 3)


@pytest.mark.parametrize("name", ["lsp14", "coco17", "coco18"])
def test_keypoints_inside_image_or_unlabelled(name):
    cfg = SyntheticConfig(image_size=(64, 48), max_people=4, max_person_height=1.2)
    total = 0
    for img, people in _scenes(name, cfg):
        h, w = img.shape[:2]
        assert img.dtype == np.uint8 and img.shape[2] == 3
        assert people.dtype == np.float32 and people.shape[1:] == (PRESETS[name].num_keypoints, 3)
        assert len(people) <= cfg.max_people
        v = people[..., 2]
        assert np.isin(v, (0, 1, 2)).all()
        lab = v > 0
        x, y = people[..., 0], people[..., 1]
        assert ((x[lab] >= 0) & (x[lab] < w) & (y[lab] >= 0) & (y[lab] < h)).all()
        assert (people[~lab] == 0).all()  # unlabelled: coordinates 0
        assert lab.any(axis=1).all()  # no empty person is annotated
        total += len(people)
    assert total > 0


def test_occlusion_flags():
    one = SyntheticConfig(image_size=(64, 64), min_people=1, max_people=1, back_facing_prob=0.0)
    clear = _scenes("coco17", SyntheticConfig(**{**vars(one), "occlusion_prob": 0.0}))
    # A lone person without occluder boxes is never occluded.
    assert all(set(np.unique(p[..., 2])) <= {0.0, 2.0} for _, p in clear)
    boxed = _scenes("coco17", SyntheticConfig(**{**vars(one), "occlusion_prob": 1.0}))
    assert any((p[..., 2] == 1).any() for _, p in boxed)


def test_back_facing_people_have_no_face_labels():
    cfg = SyntheticConfig(
        image_size=(96, 96), min_people=1, max_people=1, back_facing_prob=1.0, max_person_height=0.6
    )
    face = [PRESETS["coco17"].index(n) for n in ("nose", "left_eye", "right_eye")]
    scenes = _scenes("coco17", cfg, n=6)
    assert sum(len(p) for _, p in scenes) > 0
    assert all((p[:, face, 2] == 0).all() for _, p in scenes)


def test_grayscale_has_equal_channels():
    img, _ = render_scene(
        np.random.default_rng(0), "lsp14", SyntheticConfig(image_size=(48, 40), grayscale=True)
    )
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


def test_people_are_drawn_where_labelled():
    # On a smooth background (no clutter, no noise) nearly every visible keypoint has a strong edge (limb
    # outline) within a few pixels; labels shifted by half a limb length would fail this.
    cfg = SyntheticConfig(
        image_size=(128, 128), min_people=1, max_people=1, clutter=0, noise=0.0, occlusion_prob=0.0
    )
    hits = total = 0
    for img, people in _scenes("lsp14", cfg, n=6):
        g = img.astype(np.float32).mean(axis=2)
        edges = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1, :]
        for x, y, v in people.reshape(-1, 3):
            if v == 2:
                xi, yi = int(x), int(y)
                patch = edges[max(0, yi - 6) : yi + 6, max(0, xi - 6) : xi + 6]
                hits += bool(patch.max() > 4 * edges.mean())
                total += 1
    assert total >= 20 and hits >= 0.9 * total


def test_alias_names_and_unknown_names():
    assert canonical_name("l_knee") == "left_knee"
    assert canonical_name("Knee_R") == "right_knee"
    assert canonical_name("head") == "head_top"
    custom = Skeleton("custom", ("head", "l_shoulder", "r_shoulder", "pelvis"), ((0, 1), (0, 2), (1, 3)))
    _, people = render_scene(np.random.default_rng(1), custom, SyntheticConfig(min_people=2, max_people=2))
    assert people.shape[1:] == (4, 3)
    bad = Skeleton("bad", ("nose", "tail_tip"), ((0, 1),))
    with pytest.raises(SyntheticError, match="tail_tip"):
        render_scene(np.random.default_rng(0), bad, SyntheticConfig())


def test_invalid_config_is_rejected():
    with pytest.raises(SyntheticError):
        SyntheticConfig(min_people=3, max_people=2)
    with pytest.raises(SyntheticError):
        SyntheticConfig(image_format="bmp")


def test_footage_frames_of_a_video_share_their_scene_and_people_move_a_little(tmp_path):
    """frames_per_video > 1: videos of one scene each (same background and people), people drifting and swaying
    between frames; video and frame are in the COCO file."""
    import cv2

    cfg = SyntheticConfig(num_images=12, image_size=(96, 96), min_people=1, max_people=2, occlusion_prob=0.0,
                          frames_per_video=6)  # fmt: skip
    coco = load_coco(make_synthetic_coco(tmp_path / "f", "lsp14", cfg, seed=3))
    assert [(f.video, f.frame) for f in coco][:7] == [*[("video001", k) for k in range(6)], ("video002", 0)]
    img = [cv2.imread(str(coco.image_path(f))).astype(np.float64) for f in coco]
    same_video = np.abs(img[0] - img[1]).mean()
    other_video = np.abs(img[0] - img[6]).mean()
    assert 0 < same_video < other_video / 3  # one scene, people moved
    a, b = coco.frames[0].keypoints, coco.frames[1].keypoints
    assert a.shape == b.shape
    both = (a[..., 2] > 0) & (b[..., 2] > 0)
    step = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)[both]
    assert 0 < np.median(step) < 0.1 * 96  # a small move per frame
    with pytest.raises(SyntheticError, match="frames_per_video"):
        SyntheticConfig(frames_per_video=0)
