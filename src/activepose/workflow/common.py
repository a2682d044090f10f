"""Small pieces the workflow modules share: opening projects, loading data and models, parallel maps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from ..pose.coco import load_coco
from ..pose.skeleton import get_skeleton
from ..project.store import Project
from .reporting import SILENT, Reporter

T = TypeVar("T")
R = TypeVar("R")

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@contextmanager
def opened(folder: str | Path, readonly: bool = False) -> Iterator[Any]:
    """Open the project in `folder` for the block (read-only: the command never writes the database)."""

    project = Project.open(folder, readonly=readonly)
    try:
        yield project
    finally:
        project.close()


def load_data(
    path: str | Path, skeleton: str | None = None, check_images: bool = True, read_headers: bool = False
):
    """Return a validated COCO keypoint data set (CocoError / SkeletonError name the file and problem)."""

    return load_coco(
        path,
        skeleton=get_skeleton(skeleton) if skeleton else None,
        check_images=check_images,
        read_image_headers=read_headers,
    )


def seeded_subset(data, max_images: int | None, seed: int = 0):
    """Return a seeded random subset of `max_images` images (ids sorted), or `data` itself."""
    if max_images is None or max_images >= len(data):
        return data
    if max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {max_images}")
    import numpy as np

    ids = sorted(np.random.default_rng(seed).choice(data.image_ids, size=max_images, replace=False).tolist())
    return data.subset(ids)


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], stage: str, reporter: Reporter = SILENT
) -> list[R]:
    """Return [fn(item)] in order, computed on a small thread pool (I/O-bound work: hashing, headers)."""
    from concurrent.futures import ThreadPoolExecutor

    out: list[R] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(fn, items):
            out.append(result)
            reporter.progress(stage, len(out), len(items))
    return out


def stored_path(path: Path, project: Path) -> str:
    """Image path as stored: relative to the project folder (project and data move together)."""
    absolute = path.resolve()
    try:
        return Path(os.path.relpath(absolute, project)).as_posix()
    except ValueError:  # another drive
        return str(absolute)
