"""Frames from video files: streamed decoding (PyAV), frame sampling, and near-identical frames kept out.

A video is decoded one frame at a time (memory does not grow with its length) by PyAV, which bundles FFmpeg:
mp4/mov (H.264, H.265, MPEG-4), mkv/webm (VP8/9, AV1), avi and the rest of what FFmpeg reads, constant or
variable frame rate. Each kept frame is written once as a JPEG under `out_dir/<video name>/<frame>.jpg`, with
its frame index (0-based, in presentation order) and its time in seconds from the stream's start (the frame's
own timestamp, so variable frame rates are right).

Which frames are kept:
- `every=N`: every N-th decoded frame; `fps=F`: at most F frames per second of video time (by timestamp);
  `max_frames=M`: at most M kept frames per video (decoding stops there).
- Near-identical frames (a paused video, a static scene, an encoder's repeated frames) are left out: a frame
  whose 32 x 32 greyscale thumbnail differs from the last kept frame's of the same video by at most
  `signature_threshold` grey levels on average (0-255 scale) is not written. This cheap signature is the first
  of two tests; the second (embedding distance, `activepose.workflow.videos`) runs on what this one keeps.

Every problem is a `VideoError` naming the file: missing, not a video, no video stream, a codec FFmpeg cannot
decode, zero frames, a truncated or corrupt stream. What was written for a video that then failed is removed.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ActiveposeError, ConfigError

VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp")
SIGNATURE_SIDE = 32
JPEG_QUALITY = 95


class VideoError(ActiveposeError, ValueError):
    """A video file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class FrameSampling:
    """Which decoded frames become pool images (see the module docstring)."""

    every: int | None = None
    fps: float | None = None
    max_frames: int | None = None  # per video
    signature_threshold: float = 1.0  # mean absolute grey-level difference of 32 x 32 thumbnails; < 0: off

    def __post_init__(self) -> None:
        if self.every is not None and self.fps is not None:
            raise ConfigError("give at most one of --every and --fps")
        if self.every is not None and self.every < 1:
            raise ConfigError(f"--every must be >= 1, got {self.every}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ConfigError(f"--fps must be > 0, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")


@dataclass(frozen=True)
class VideoFrame:
    """One written frame: its file, frame index, time in seconds, size and sha1 of the file's bytes."""

    path: Path
    frame: int
    seconds: float
    width: int
    height: int
    sha1: str


@dataclass
class VideoFrames:
    """What `extract_frames` did with one video."""

    name: str
    source: Path
    frames: list[VideoFrame] = field(default_factory=list)
    decoded: int = 0  # frames decoded
    sampled: int = 0  # frames chosen by every / fps (before near-duplicates)
    near_duplicates: int = 0  # sampled frames left out as near-identical to the last kept one


def video_files(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """Return (video name, file) for `paths`: files as given, folders searched for video files (sorted).

    A file's name is its stem; a folder's videos are named by their path under it without the extension
    (`cam1/monday`); hidden files are skipped. Two videos with one name (ignoring case), a missing path, a
    folder without videos: VideoError.
    """
    out: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS
                 and not any(part.startswith(".") for part in f.relative_to(p).parts)),
                key=lambda f: f.relative_to(p).as_posix(),
            )  # fmt: skip  # hidden files (macOS's ._clip.mp4) are not videos
            if not found:
                raise VideoError(f"{p}: no video files in this folder ({', '.join(VIDEO_EXTS)})")
            out += [(f.relative_to(p).with_suffix("").as_posix(), f) for f in found]
        elif p.is_file():
            out.append((p.stem, p))
        else:
            raise VideoError(f"{p}: no such file or folder")
    seen: dict[str, Path] = {}
    for name, f in out:
        key = name.casefold()  # frames/<name>/ must be distinct on case-insensitive disks too
        if key in seen:
            raise VideoError(f"{f}: another video has the same name {name!r} ({seen[key]}); rename one")
        seen[key] = f
    return out


def _open(path: Path):
    import av

    try:
        container = av.open(str(path), mode="r")
    except FileNotFoundError:
        raise VideoError(f"{path}: no such file") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a readable video ({_why(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream in this file")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None or getattr(codec, "codec", None) is None:
        container.close()
        raise VideoError(f"{path}: unsupported video codec (FFmpeg has no decoder for it)")
    stream.thread_type = "AUTO"
    return container, stream


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.split(": '")[0].strip()


def probe_video(path: str | Path) -> dict:
    """Return {codec, width, height, frames (0: unknown), fps, seconds} of a video's first video stream."""
    path = Path(path)
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        seconds = float(stream.duration * stream.time_base) if stream.duration else None
        if seconds is None and container.duration:
            seconds = container.duration / 1_000_000
        return {
            "codec": stream.codec_context.name, "width": stream.codec_context.width,
            "height": stream.codec_context.height, "frames": int(stream.frames or 0),
            "fps": float(rate) if rate else None, "seconds": seconds,
        }  # fmt: skip


def upright(rgb: np.ndarray, rotation: int | float | None) -> np.ndarray:
    """The frame as it is meant to be seen: phone videos store the camera's pixels plus a display rotation
    (`rotation`: degrees counterclockwise, FFmpeg's display matrix), which decoders do not apply."""
    k = round((rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def signature(rgb: np.ndarray) -> np.ndarray:
    """A frame's content signature: its 32 x 32 greyscale thumbnail (float32, 0-255)."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (SIGNATURE_SIDE, SIGNATURE_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference of two signatures (0: the same thumbnail)."""
    return float(np.abs(a - b).mean())


def _frames(container, stream, path: Path):
    """Yield (index, seconds, frame) of every decoded frame (a PyAV VideoFrame: `.to_ndarray(format="rgb24")`
    converts it, for the frames kept only); a corrupt or truncated stream is a VideoError."""
    import av

    start = stream.start_time or 0
    base = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    index = packets = 0
    try:
        for packet in container.demux(stream):
            if packet.dts is not None or packet.size:  # not the demuxer's final empty (flush) packet
                packets += 1
            for frame in packet.decode():
                if frame.pts is not None and base is not None:
                    seconds = float((frame.pts - start) * base)
                else:
                    seconds = index / float(rate) if rate else float(index)
                yield index, seconds, frame
                index += 1
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: corrupt or truncated video at frame {index} ({_why(exc)})") from None
    if index == 0:
        raise VideoError(f"{path}: the video has no frames")
    # The container's index lists more samples than the file holds: its end is missing. (Fewer decoded frames
    # than samples is not enough: an edit list or AVI's dropped-frame chunks list samples never shown.)
    if stream.frames and packets < stream.frames:
        raise VideoError(
            f"{path}: truncated video: {packets} of the {stream.frames} frames its index lists are in the file"
        )


def extract_frames(
    path: str | Path,
    name: str,
    out_dir: str | Path,
    sampling: FrameSampling = FrameSampling(),
    progress: Callable[[int, int | None], None] | None = None,
) -> VideoFrames:
    """Decode `path` and write its kept frames under `out_dir/name/` (see the module docstring).

    `progress(decoded, total or None)` is called every few frames. On any error the video's folder is removed.
    """
    import cv2

    path, folder = Path(path), Path(out_dir) / name
    container, stream = _open(path)
    total = int(stream.frames or 0) or None
    if sampling.max_frames is not None and sampling.every is not None and total is not None:
        total = min(total, sampling.max_frames * sampling.every)
    result = VideoFrames(name=name, source=path)
    last_sig: np.ndarray | None = None
    next_time = 0.0
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        container.close()
        raise VideoError(
            f"{path}: {folder} already exists (a video of this name was decoded there)"
        ) from None
    try:
        with container:
            for index, seconds, decoded in _frames(container, stream, path):
                result.decoded = index + 1
                if progress is not None and (index % 16 == 0):
                    progress(result.decoded, total)
                if sampling.every is not None and index % sampling.every:
                    continue
                if sampling.fps is not None:
                    if seconds + 1e-6 < next_time:
                        continue
                    next_time = (math.floor(seconds * sampling.fps + 1e-6) + 1) / sampling.fps
                result.sampled += 1
                rgb = upright(decoded.to_ndarray(format="rgb24"), getattr(decoded, "rotation", 0))
                sig = signature(rgb)
                if (
                    last_sig is not None
                    and sampling.signature_threshold >= 0
                    and signature_distance(sig, last_sig) <= sampling.signature_threshold
                ):
                    result.near_duplicates += 1
                    continue
                last_sig = sig
                ok, buf = cv2.imencode(
                    ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
                )
                if not ok:
                    raise VideoError(f"{path}: frame {index} could not be encoded as JPEG")
                data = buf.tobytes()
                target = folder / f"{index:07d}.jpg"
                target.write_bytes(data)
                h, w = rgb.shape[:2]
                result.frames.append(
                    VideoFrame(target, index, round(seconds, 6), w, h, hashlib.sha1(data).hexdigest())
                )
                if sampling.max_frames is not None and len(result.frames) >= sampling.max_frames:
                    break
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if progress is not None:
        progress(result.decoded, result.decoded)
    return result


def write_video(
    path: str | Path,
    frames: Sequence[np.ndarray] | Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    crf: int = 18,
) -> Path:
    """Encode RGB frames (H x W x 3 uint8, one size, even sides for H.264) as a video file (tests, demos)."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            ):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return path
