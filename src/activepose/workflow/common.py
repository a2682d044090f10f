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


def skewed_video_subset(data, size: int, skew: float, seed: int = 0):
    """Return `size` frames of footage whose videos give very unequal shares, as real recordings do: the videos
    are ranked in a seeded order and the k-th (1-based) gets a share proportional to k ** -skew of the frames
    (skew 0: equal shares; 1: Zipf, a few long or busy recordings give most frames, the rest a handful), at
    least one frame each while `size` allows, never more than it has (the excess goes to the next ones); the
    frames of a video are a seeded random draw. Ids sorted. ConfigError when an image has no `video`.
    """
    import numpy as np

    if skew < 0:
        raise ConfigError(f"--skew must be >= 0, got {skew}")
    if not 0 < size <= len(data):
        raise ConfigError(f"--size must be between 1 and the {len(data)} images, got {size}")
    missing = [f.image_id for f in data if f.video is None]
    if missing:
        raise ConfigError(
            f"{data.path or 'the data set'}: --skew needs every image's video (COCO images[].video); "
            f"{len(missing)} image(s) have none, e.g. id {missing[0]}"
        )
    rng = np.random.default_rng(seed)
    by_video: dict[str, list[int]] = {}
    for f in data:
        by_video.setdefault(f.video, []).append(f.image_id)
    names = sorted(by_video)
    order = [names[i] for i in rng.permutation(len(names))]
    avail = np.array([len(by_video[v]) for v in order])
    weight = np.arange(1, len(order) + 1, dtype=np.float64) ** -float(skew)
    take = np.minimum(avail, 1 if size >= len(order) else 0)
    if size < len(order):  # fewer frames than videos: one frame from each of the top-weighted videos
        take[:size] = 1
    left = size - int(take.sum())
    while left > 0:  # water-filling: shares by weight among the videos with frames to spare
        room = avail - take
        open_ = room > 0
        share = np.floor(left * weight * open_ / (weight * open_).sum()).astype(np.int64)
        share = np.minimum(share, room)
        if share.sum() == 0:  # the remainder: one more frame each, heaviest first
            for k in np.flatnonzero(open_)[:left]:
                share[k] = 1
        take += share
        left = size - int(take.sum())
    ids = []
    for v, n in zip(order, take, strict=True):
        if n:
            ids += rng.choice(by_video[v], size=int(n), replace=False).tolist()
    return data.subset(sorted(int(i) for i in ids))


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
