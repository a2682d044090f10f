"""Pool images from video files: frames decoded once into the project, near-identical frames kept out.

`frames_from_videos` decodes each video (`activepose.interop.video`: streamed, sampled by --every / --fps,
a cheap content signature against the last kept frame), then compares the survivors' ImageNet embeddings
(the same extractor and cache that selection uses, so the work is not repeated there): a frame whose cosine
distance to the last kept frame of its video is at most `embedding_threshold` is a near-duplicate too. Its
file is deleted; the counts of both tests are reported per video.

Defaults, measured on `youtube_pose` (consecutive annotated frames of 8 pool videos, 312 pairs): the frame
pairs that look the same by eye (the same pose, two frames apart) have signature distances 0.17-0.48 grey
levels and embedding distances 0.002-0.008, while the median pair differs by 5.1 grey levels and 0.071.
So 0.5 grey levels and 0.004 drop only near-identical frames.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..interop.video import FrameSampling, VideoFrames, extract_frames, video_files
from .reporting import SILENT, Reporter

FRAMES_DIR = "frames"
SIGNATURE_THRESHOLD = 0.5
EMBEDDING_THRESHOLD = 0.004


@dataclass(frozen=True)
class VideoOptions:
    """How `init --videos` / `add-videos` turn videos into pool frames."""

    sampling: FrameSampling = field(
        default_factory=lambda: FrameSampling(signature_threshold=SIGNATURE_THRESHOLD)
    )
    embedding_threshold: float = EMBEDDING_THRESHOLD  # < 0: no embedding test
    extractor: str = "mobilenet_v2"
    weights: Path | None = None

    @classmethod
    def from_options(
        cls,
        every: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        keep_near_duplicates: bool = False,
    ) -> VideoOptions:
        keep = keep_near_duplicates  # both tests off (a negative threshold)
        sampling = FrameSampling(every, fps, max_frames, -1.0 if keep else SIGNATURE_THRESHOLD)
        return cls(sampling=sampling, embedding_threshold=-1.0 if keep else EMBEDDING_THRESHOLD)


@dataclass
class FootageReport:
    """Per video: frames decoded, sampled, left out by the signature and by the embedding test, kept."""

    videos: list[VideoFrames]
    embedding_duplicates: dict[str, int]

    def rows(self) -> list[tuple[str, int, int, int, int, int]]:
        return [
            (v.name, v.decoded, v.sampled, v.near_duplicates, self.embedding_duplicates.get(v.name, 0),
             len(v.frames))
            for v in self.videos
        ]  # fmt: skip

    @property
    def kept(self) -> int:
        return sum(len(v.frames) for v in self.videos)

    @property
    def near_duplicates(self) -> int:
        return sum(v.near_duplicates for v in self.videos) + sum(self.embedding_duplicates.values())


def _embedding_duplicates(
    videos: list[VideoFrames], opts: VideoOptions, cache: Path | None, reporter
) -> dict:
    from ..sampling.features import create_extractor, extract_features

    paths = [f.path for v in videos for f in v.frames]
    if opts.embedding_threshold < 0 or not paths:
        return {}
    extractor = create_extractor(opts.extractor, weights=opts.weights)
    emb = extract_features(
        extractor, paths, cache_dir=cache, num_workers=1,
        progress=reporter.counter("near-duplicate frames (embeddings)", len(paths)),
    )  # fmt: skip
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    dropped: dict[str, int] = {}
    row = 0
    for v in videos:
        keep, last = [], None
        for f in v.frames:
            e = emb[row]
            row += 1
            if last is not None and 1.0 - float(e @ last) <= opts.embedding_threshold:
                f.path.unlink(missing_ok=True)
                dropped[v.name] = dropped.get(v.name, 0) + 1
                continue
            keep.append(f)
            last = e
        v.frames = keep
    return dropped


def frames_from_videos(
    sources: Sequence[str | Path],
    project_folder: Path,
    opts: VideoOptions = VideoOptions(),
    taken: Sequence[str] = (),
    reporter: Reporter = SILENT,
) -> FootageReport:
    """Decode `sources` (files or folders) into `project_folder/frames/<video>/` and return what was kept.

    `taken`: video names the project already has (a second video with one of them is refused). On an error
    every frame written by this call is removed.
    """
    named = video_files(sources)
    have = {t.casefold() for t in taken}
    clash = sorted(name for name, _ in named if name.casefold() in have)
    if clash:
        raise ConfigError(f"the project already has video(s) named {', '.join(clash)}: rename the file(s)")
    out = Path(project_folder) / FRAMES_DIR
    done: list[VideoFrames] = []
    try:
        for k, (name, path) in enumerate(named, 1):
            stage = f"decoding {path.name} ({k}/{len(named)})"
            done.append(
                extract_frames(
                    path, name, out, opts.sampling, lambda d, t, s=stage: reporter.progress(s, d, t)
                )
            )
        cache = Path(project_folder) / "caches" / "features"
        dropped = _embedding_duplicates(done, opts, cache, reporter)
    except BaseException:
        for v in done:
            shutil.rmtree(out / v.name, ignore_errors=True)
        raise
    return FootageReport(done, dropped)


def footage_entries(report: FootageReport, project_folder: Path, first_id: int | None = None) -> list[tuple]:
    """Store rows (path relative to the project, width, height, sha1, id, video, frame, seconds), in video and
    frame order; ids `first_id`, `first_id` + 1, ... (None: the store numbers them after its largest id)."""
    root = Path(project_folder)
    frames = [(v, f) for v in report.videos for f in v.frames]
    return [
        (f.path.relative_to(root).as_posix(), f.width, f.height, f.sha1, None if first_id is None else first_id + k,
         v.name, f.frame, f.seconds)
        for k, (v, f) in enumerate(frames)
    ]  # fmt: skip


def add_videos(
    project_folder: str | Path,
    sources: Sequence[str | Path],
    opts: VideoOptions = VideoOptions(),
    reporter: Reporter = SILENT,
) -> tuple[FootageReport, list[int]]:
    """Add the frames of more videos to a project's pool; return (what was kept, the new image ids).

    Frames are written first and stored in one transaction; if storing fails, the written frames are removed.
    """
    from ..project.store import Project

    folder = Path(project_folder)
    with Project.open(folder) as proj:
        report = frames_from_videos(sources, folder, opts, taken=proj.videos(), reporter=reporter)
        try:
            if not report.kept:
                raise ConfigError(f"{', '.join(map(str, sources))}: no frames kept; nothing added")
            ids = proj.add_images(footage_entries(report, folder))
        except BaseException:
            for v in report.videos:
                shutil.rmtree(folder / FRAMES_DIR / v.name, ignore_errors=True)
            raise
    return report, ids
