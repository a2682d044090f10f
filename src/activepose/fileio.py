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

from .errors import ActiveposeError


class ImageReadError(ActiveposeError, OSError):
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # a failed write (disk full, quota) names no file by itself: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
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


# EXIF orientation tag (0x0112) -> the transform that shows the picture upright, on an (H, W, ...) array.
# 5-8 swap width and height. Same maps as PIL's ImageOps.exif_transpose and OpenCV's imread.
EXIF_ORIENTATION_TAG = 0x0112
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transposed
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise to show upright
    7: lambda a: np.rot90(a, -1)[::-1],  # transversed
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise to show upright
}


def _orientation_of(im) -> int:
    """Return the EXIF orientation (1-8; 1 when absent or invalid) of an opened PIL image, header only."""
    try:
        if im.format == "PNG":  # PIL's PNG getexif() decodes the whole image to look for a late eXIf chunk
            raw = im.info.get("exif")
            if not raw:
                return 1
            from PIL import Image

            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: the pixels are still usable, shown as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _open_header(path: Path, data: bytes | None = None) -> tuple[int, int, int]:
    """Return (stored width, stored height, EXIF orientation) from the header; ImageReadError naming the file."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            return int(im.width), int(im.height), _orientation_of(im)
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable image (unknown format or corrupt header)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc


def _oriented(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation >= 5 else (width, height)


def apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Return the (H, W, ...) array as shown upright for EXIF `orientation` (1-8; other values: unchanged)."""
    fn = _ORIENT.get(int(orientation))
    return image if fn is None else np.ascontiguousarray(fn(image))


def exif_orientation(path: str | Path) -> int:
    """Return the EXIF orientation tag of the image at `path` (1 = as stored, also when there is none)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    return _open_header(path)[2]


def _decode(buf: np.ndarray, path: Path, grayscale: bool) -> np.ndarray:
    """Return the decoded, EXIF-oriented image (H, W, 3) RGB uint8 of the file bytes `buf`."""
    import cv2

    # Orientation is applied here, from the same header `image_size` reads, so both always agree
    # (whatever the OpenCV version does by default).
    flags = (cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    try:
        orientation = _open_header(path, buf.tobytes())[2]
    except ImageReadError:  # a format OpenCV reads but PIL does not: no EXIF to apply
        orientation = 1
    img = apply_exif_orientation(img, orientation)
    if grayscale:
        return np.repeat(img[:, :, None], 3, axis=2)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Return the image at `path` as an RGB uint8 array (H, W, 3); raise ImageReadError naming the file.

    The EXIF orientation is applied (as cameras and viewers show the picture), so the shape always matches
    `image_size(path)` and the width/height an annotation tool shows.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read the file ({exc})") from exc
    return _decode(buf, path, grayscale)


def image_size(path: str | Path) -> tuple[int, int]:
    """Return (width, height) as `read_image` returns the image: from the header, EXIF orientation applied
    (orientations 5-8 swap width and height). Raise ImageReadError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    return _oriented(*_open_header(path))


def probe_image(path: str | Path, decode: bool = True) -> tuple[int, int, str]:
    """Return (width, height, sha1) of an image file for registering it (project creation).

    Width and height are as `read_image` returns the image (EXIF orientation applied); sha1 is
    `file_sha1`'s content hash. The file is read once. `decode=True` also checks that the decoder used for
    training reads the pixels (a file with a valid header but an unsupported or broken body fails here,
    not mid-training), at a reduced scale to keep it cheap. Raises ImageReadError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read the file ({exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: empty file, not an image")
    width, height, orientation = _open_header(path, data)
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{path}: image header says {width}x{height}")
    if decode:
        import cv2

        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_4)
        if img is None:
            raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    return (*_oriented(width, height, orientation), hashlib.sha1(data).hexdigest())
