"""Creating a project: the pool (a COCO file or an image folder), initial labels and a test set.

Every image is checked as `activepose check` checks it: the header is read (size with EXIF orientation
applied) and hashed; unreadable images and images whose declared size differs from the file are listed and
left out, never stored. The project is built in a temporary sibling folder and renamed into place at the end,
so an error or a crash never leaves a half-made project.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, EnvironmentProblem
from ..fileio import ImageReadError, probe_image
from ..interop.coco import import_coco
from ..pose.skeleton import get_skeleton, same_keypoints
from ..project.schema import DB_NAME
from ..project.store import Project
from .common import IMAGE_EXTS, load_data, parallel_map, stored_path
from .footage import FootageReport, VideoOptions, footage_entries, frames_from_videos
from .reporting import SILENT, Reporter


@dataclass(frozen=True)
class ProjectSource:
    """Where a new project's images and labels come from: exactly one of `pool` and `images`."""

    pool: Path | None = None  # COCO JSON: its image ids are kept, its labels ignored
    images: Path | None = None  # an image folder: ids 1..n by relative path
    videos: tuple[Path, ...] = ()  # video files or folders of them: frames written into the project
    video_options: VideoOptions = field(default_factory=VideoOptions)
    labels: Path | None = None  # COCO JSON of initial labels (pool images only)
    skeleton: str | None = None  # preset name or COCO JSON; required with `images`
    test: Path | None = None  # COCO JSON of test-only images
    accept_predictions: bool = False  # initial labels may be model output (annotations with a score)

    def __post_init__(self) -> None:
        if (self.pool is not None) + (self.images is not None) + bool(self.videos) != 1:
            raise ConfigError("give exactly one of --pool POOL.json, --images DIR or --videos FILE|DIR")
        if not self.videos and self.video_options != VideoOptions():
            raise ConfigError("--every, --fps, --max-frames and --keep-near-duplicates are for --videos")
        if self.pool is None and self.skeleton is None:
            what = "--images" if self.images is not None else "--videos"
            raise ConfigError(f"--skeleton is required with {what} (coco17, coco18, lsp14 or a COCO JSON)")


@dataclass
class CreatedProject:
    folder: Path
    skeleton: str
    num_keypoints: int
    counts: dict[str, int]
    skipped: list[str] = field(default_factory=list)  # files left out, each with the reason
    import_message: str | None = None
    footage: FootageReport | None = None  # with --videos: frames decoded and kept per video

    @property
    def images(self) -> int:
        return sum(self.counts.values())


def _probe(path: Path) -> tuple[tuple[int, int, str] | None, str | None]:

    try:
        return probe_image(path), None
    except (ImageReadError, OSError) as exc:
        return None, str(exc)


def _check_target(folder: Path) -> Path:

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a project already exists there" if (folder / DB_NAME).exists() else "the folder is not empty"
        raise ConfigError(f"{folder}: refusing to initialise: {what}")
    return folder.parent.resolve() / folder.name


def create_project(folder: str | Path, source: ProjectSource, reporter: Reporter = SILENT) -> CreatedProject:
    """Create a project (project.db + checkpoints/, caches/, exports/) in `folder` from `source`."""

    folder = Path(folder)
    target = _check_target(folder)
    tmp = target.parent / f".{target.name}.init-{os.getpid()}"  # built here (frames too), renamed at the end
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _create(folder, target, tmp, source, reporter)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _create(
    folder: Path, target: Path, tmp: Path, source: ProjectSource, reporter: Reporter
) -> CreatedProject:
    entries: list[tuple] = []  # (stored path, width, height, sha1, id[, video, frame, seconds])
    skipped: list[str] = []
    meta: dict[str, str] = {}
    footage = None
    if source.videos:
        skel = get_skeleton(source.skeleton)
        footage = frames_from_videos(source.videos, tmp, source.video_options, reporter=reporter)
        entries += footage_entries(footage, tmp, first_id=1)
        if not entries:
            raise ConfigError(f"{', '.join(map(str, source.videos))}: no frames kept")
        meta["videos"] = json.dumps([str(Path(v).resolve()) for v in source.videos])
    elif source.pool is not None:
        pool = load_data(source.pool, source.skeleton, check_images=False)
        skel = pool.skeleton
        paths = [pool.image_path(f) for f in pool]
        probes = parallel_map(_probe, paths, "reading pool images", reporter)
        for f, p, (info, why) in zip(pool, paths, probes, strict=True):
            if info is None:
                skipped.append(f"image id {f.image_id}: {why}")
            elif (info[0], info[1]) != (f.width, f.height):
                skipped.append(
                    f"image id {f.image_id}: {p}: {source.pool.name} says {f.width}x{f.height} but the image is "
                    f"{info[0]}x{info[1]} (EXIF orientation applied)"
                )
            else:
                entries.append(
                    (stored_path(p, target), info[0], info[1], info[2], f.image_id, f.video, f.frame)
                )
        if not entries:
            raise ConfigError(
                f"{source.pool}: none of its {len(pool)} images is usable ({len(skipped)} skipped)"
            )
        meta["pool"] = str(source.pool.resolve())
    else:
        skel = get_skeleton(source.skeleton)
        images = source.images
        if not images.is_dir():
            raise ConfigError(f"{images}: not a folder")
        files = sorted(
            (p for p in images.rglob("*") if p.is_file()), key=lambda p: p.relative_to(images).as_posix()
        )
        candidates = []
        for p in files:
            if p.suffix.lower() in IMAGE_EXTS:
                candidates.append(p)
            else:
                skipped.append(f"{p}: not an image file ({p.suffix or 'no extension'})")
        probes = parallel_map(_probe, candidates, "reading image headers", reporter)
        for p, (info, why) in zip(candidates, probes, strict=True):
            if info is None:
                skipped.append(why)
            else:
                entries.append((stored_path(p, target), info[0], info[1], info[2], len(entries) + 1))
        if not entries:
            raise ConfigError(f"{images}: no readable images found")
        meta["images"] = str(images.resolve())

    test_ids: list[int] = []
    if source.test is not None:
        test_ids, extra = _test_images(source.test, skel, entries, target, skipped, reporter)
        entries += extra
        meta["test"] = str(source.test.resolve())

    imported = None
    try:
        with Project.create(tmp, skel, entries, meta=meta) as proj:
            if test_ids:
                proj.set_image_state(test_ids, "test")
            if source.labels is not None:
                imported = import_coco(proj, source.labels, accept_predictions=source.accept_predictions)
            counts = proj.counts()
        if folder.exists():
            folder.rmdir()  # an empty folder (checked above); the rename needs it gone
        os.rename(tmp, target)
    except OSError as exc:
        raise EnvironmentProblem(f"{folder}: cannot create the project ({exc.strerror or exc})") from exc
    return CreatedProject(
        folder=folder, skeleton=skel.name, num_keypoints=skel.num_keypoints, counts=counts, skipped=skipped,
        import_message=imported.message if imported is not None else None, footage=footage,
    )  # fmt: skip


def _test_images(test: Path, skel, entries, target: Path, skipped: list[str], reporter: Reporter):
    """Return (ids of test images, new entries): a test image equal in content to a pool image marks that
    pool image 'test'; any other becomes a new 'test' image with an id after the largest pool id."""
    test_set = load_data(test, check_images=False)
    same_keypoints(str(test), test_set.skeleton, skel, "the project's")
    by_hash: dict[str, list[int]] = {}
    for _, _, _, digest, image_id, *_ in entries:
        by_hash.setdefault(digest, []).append(image_id)
    paths = [test_set.image_path(f) for f in test_set]
    probes = parallel_map(_probe, paths, "reading test images", reporter)
    bad = [why for info, why in probes if info is None]
    if bad:
        raise ConfigError(f"{test}: {len(bad)} unreadable test image(s): " + "; ".join(bad[:5]))
    next_id = max((e[4] for e in entries), default=0) + 1
    ids, extra = [], []
    for frame, p, (info, _) in zip(test_set.frames, paths, probes, strict=True):
        digest = info[2]
        if digest in by_hash:
            ids += by_hash[digest]  # every copy of it in the pool
            continue
        extra.append((stored_path(p, target), info[0], info[1], digest, next_id, frame.video, frame.frame))
        by_hash[digest] = [next_id]
        ids.append(next_id)
        next_id += 1
    return sorted(set(ids)), extra
