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

    from activepose.models import create_model

    torch.manual_seed(seed)
    return create_model(
        "vgg_tiny", num_keypoints=skeleton.num_keypoints, num_limbs=skeleton.num_limbs, pretrained=False,
        width=0.25, channels=32,
    )  # fmt: skip
