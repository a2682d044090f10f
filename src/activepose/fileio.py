"""Atomic file writes and image reading with errors that name the file."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


class ImageReadError(OSError):
    """An image file is missing, unreadable or not an image."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through `write(fileobj)` into a temporary sibling, fsync, then rename over `path`.

    A reader never sees a half-written file and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _strict(obj: Any) -> Any:
    """Return `obj` with NaN / infinity replaced by None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    """Write `obj` as strict JSON (undefined numbers become null) atomically."""
    data = json.dumps(_strict(obj), indent=indent, allow_nan=False).encode()
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def file_sha1(path: str | Path) -> str:
    """Return the sha1 hex digest of a file's bytes: the content hash used for caches and the project store.

    Fast (no decoding; hashlib releases the GIL, so a thread pool hashes in parallel) and stable under
    renames and copies; re-encoding the same picture gives a different hash.
    """
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Return the image at `path` as an RGB uint8 array (H, W, 3); raise ImageReadError naming the file."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if grayscale:
        return np.repeat(img[:, :, None], 3, axis=2)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str | Path) -> tuple[int, int]:
    """Return (width, height) read from the image header; raise ImageReadError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
