"""Shared fixtures: real data is read from ../shared/data when present, else those tests skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ACTIVEPOSE_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """Return a path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path


def tiny_model(skeleton, seed: int = 0):
    """Return a small, fast, seeded vgg_tiny pose model (quarter width, 32-channel stages) for tests."""
    import torch

    from activepose.pose.models import create_model

    torch.manual_seed(seed)
    return create_model(
        "vgg_tiny", num_keypoints=skeleton.num_keypoints, num_limbs=skeleton.num_limbs, pretrained=False,
        width=0.25, channels=32,
    )  # fmt: skip


def synthetic_project_data(root: Path, num_images: int, n_initial: int, n_test: int):
    """Write a synthetic lsp14 pool (64 px, 1-2 people per image, ids 1..n) with initial.json (the first
    `n_initial` ids) and test.json (the last `n_test`) beside it; return (root, path of the full file)."""
    import json

    from activepose.config import SyntheticConfig
    from activepose.pose.synthetic import make_synthetic_coco

    cfg = SyntheticConfig(num_images=num_images, image_size=(64, 64), max_people=2, min_people=1)
    gt = make_synthetic_coco(root, "lsp14", cfg, seed=3)
    raw = json.loads(gt.read_text())
    for name, keep in (
        ("initial.json", lambda i: i <= n_initial),
        ("test.json", lambda i: i > num_images - n_test),
    ):
        part = {**raw, "images": [im for im in raw["images"] if keep(im["id"])]}
        part["annotations"] = [a for a in raw["annotations"] if keep(a["image_id"])]
        (root / name).write_text(json.dumps(part))
    return root, gt


def footage_project(tmp_path: Path):
    """Six synthetic images as frames of two videos ("a": frames 0, 10, 20, 30; "b": 0, 5), frame 10 of "a"
    labelled with its true people, round 1 open on frames 0 and 20 of "a" and frame 0 of "b"."""
    from activepose.pose.coco import load_coco
    from activepose.project.store import Project

    root, gt_path = synthetic_project_data(tmp_path / "data", num_images=6, n_initial=0, n_test=0)
    gt = load_coco(gt_path)
    where = {1: ("a", 0), 2: ("a", 10), 3: ("a", 20), 4: ("a", 30), 5: ("b", 0), 6: ("b", 5)}
    entries = [(gt.image_path(f).resolve(), f.width, f.height, None, f.image_id, *where[f.image_id],
                where[f.image_id][1] / 25) for f in gt]  # fmt: skip
    folder = tmp_path / "proj"
    with Project.create(folder, gt.skeleton, entries) as p:
        p.add_labels({2: gt.frame(2).keypoints}, "test")
        p.open_round("random", {}, [(3, None), (1, None), (5, None)])
    return folder, gt


def project_with_round(folder: Path, gt, round_ids):
    """Return an open `Project` of the COCO data set `gt`'s images with round 1 open on `round_ids`."""
    from activepose.project.store import Project

    imgs = [(gt.image_path(f).resolve(), f.width, f.height, None, f.image_id) for f in gt]
    p = Project.create(folder, gt.skeleton, imgs)
    assert p.open_round("test", {}, [(i, 1.0 / i) for i in round_ids]) == 1
    return p
