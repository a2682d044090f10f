"""Test-time augmentations (TTAs) of the paper: clean, blur, bright, dark, zoom in, zoom out.

Each TTA maps an image and its ground-truth people to the augmented image and the people as they appear
in it, so that metrics on the augmented set stay comparable with the clean set. Images keep their size.

- `clean`: unchanged.
- `blur`: box blur with a 5 x 5 kernel (`cv2.blur`, the operation of albumentations' `Blur(blur_limit=5)`;
  the paper says "blur with kernel size of 5"). Keypoints unchanged.
- `bright` / `dark`: pixel values multiplied by 1.3 / 0.7, rounded and clipped to [0, 255]. Keypoints unchanged.
- `zoom_in` / `zoom_out`: scaled by 1.4 / 0.6 about the image centre (bilinear), output the same size; the
  border revealed by zooming out is black. Keypoints move by the same map
  x' = s (x - W/2) + W/2 (COCO continuous pixel coordinates); labelled keypoints that leave the image
  ([0, W) x [0, H)) become not labelled (v = 0, coordinates 0) as in the data files.

Keypoint arrays are (N, K, 3) of (x, y, v); v = 0 means not labelled and is never changed into labelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import TTA_NAMES
from ..errors import ConfigError

LOG = logging.getLogger(__name__)

BLUR_KERNEL = 5
BRIGHT_FACTOR = 1.3
DARK_FACTOR = 0.7
ZOOM_IN_SCALE = 1.4
ZOOM_OUT_SCALE = 0.6


def _identity_image(image: np.ndarray) -> np.ndarray:
    return image


def _blur_image(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.blur(image, (BLUR_KERNEL, BLUR_KERNEL), borderType=cv2.BORDER_REFLECT_101)


def _scale_intensity(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(image: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(image.astype(np.float32) * factor), 0, 255).astype(np.uint8)

    return apply


def _zoom_image(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        # cv2 addresses pixel centres at integer positions, so the continuous centre (W/2, H/2) of the
        # image is ((W - 1) / 2, (H - 1) / 2) there; this keeps image and keypoint maps identical.
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), 0.0, scale)
        return cv2.warpAffine(
            image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )

    return apply


def _identity_points(people: np.ndarray, width: int, height: int) -> np.ndarray:
    return people


def _zoom_points(scale: float) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def apply(people: np.ndarray, width: int, height: int) -> np.ndarray:
        out = np.array(people, dtype=np.float32, copy=True)
        if out.size == 0:
            return out
        centre = np.array([width / 2.0, height / 2.0], dtype=np.float32)
        out[..., :2] = (out[..., :2] - centre) * scale + centre
        x, y = out[..., 0], out[..., 1]
        inside = (x >= 0) & (y >= 0) & (x < width) & (y < height)
        dropped = (out[..., 2] <= 0) | ~inside
        out[dropped] = 0.0
        return out

    return apply


@dataclass(frozen=True)
class TTA:
    """One test-time augmentation; calling it returns (augmented image, people in the augmented image)."""

    name: str
    image_fn: Callable[[np.ndarray], np.ndarray]
    points_fn: Callable[[np.ndarray, int, int], np.ndarray]
    description: str = ""

    def __call__(self, image: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        return self.image_fn(image), self.points(people, w, h)

    def points(self, people: np.ndarray, width: int, height: int) -> np.ndarray:
        """Return the people as they appear in the augmented image of size width x height (no image needed)."""
        people = np.asarray(people, dtype=np.float32)
        return self.points_fn(people, int(width), int(height))


# Paper order: no augmentation, then Fig. 3 (B-F).
TTAS: dict[str, TTA] = {
    "clean": TTA("clean", _identity_image, _identity_points, "no augmentation"),
    "blur": TTA("blur", _blur_image, _identity_points, f"box blur, kernel {BLUR_KERNEL}"),
    "bright": TTA(
        "bright", _scale_intensity(BRIGHT_FACTOR), _identity_points, f"brightness x{BRIGHT_FACTOR}"
    ),
    "dark": TTA("dark", _scale_intensity(DARK_FACTOR), _identity_points, f"brightness x{DARK_FACTOR}"),
    "zoom_in": TTA(
        "zoom_in",
        _zoom_image(ZOOM_IN_SCALE),
        _zoom_points(ZOOM_IN_SCALE),
        f"scale x{ZOOM_IN_SCALE} about the centre",
    ),
    "zoom_out": TTA(
        "zoom_out",
        _zoom_image(ZOOM_OUT_SCALE),
        _zoom_points(ZOOM_OUT_SCALE),
        f"scale x{ZOOM_OUT_SCALE} about the centre",
    ),
}


def get_tta(name: str | TTA) -> TTA:
    """Return the TTA registered as `name`; raise ConfigError (a ValueError) listing the valid names."""
    if isinstance(name, TTA):
        return name
    try:
        return TTAS[str(name)]
    except KeyError:
        raise ConfigError(f"unknown TTA {name!r}; choose from {', '.join(TTA_NAMES)}") from None


def apply_tta(name: str | TTA, image: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (augmented image, augmented people) for the TTA `name`."""
    return get_tta(name)(image, people)
