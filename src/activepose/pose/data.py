"""Letterboxing, training augmentation and the torch Dataset that yields images + OpenPose targets.

Coordinates are COCO continuous pixel coordinates (pixel i covers [i, i+1)) throughout.

Pipeline of one training sample (`PoseDataset` with `augment`):
1. read the image (RGB, or gray replicated to 3 channels with `grayscale=True`);
2. resize so that the long side is `input_size` (as `letterbox`) and paste it CENTRED on a black
   (input_size, input_size) canvas: the random affine below acts about the canvas centre, so centring
   makes rotation and scaling act about the image content and keeps people in frame;
3. the random augmentation of `build_augmentation` at network resolution (cheap: one 256 x 256 warp);
4. targets from `activepose.pose.fields.encode_targets`.
Without `augment` the sample is the plain letterbox (top-left, zero padding bottom/right) used at
inference, and `scale` maps network-input coordinates back to the image (image = input / scale).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import INPUT_SIZE, AugmentConfig, TargetConfig
from ..errors import ConfigError
from ..fileio import read_image
from .coco import CocoKeypoints
from .fields import encode_targets
from .skeleton import Skeleton

LOG = logging.getLogger(__name__)


class Augmenter:
    """Random augmentation of one (image, people) pair; `build_augmentation` makes one.

    Geometry (rotation, shift, scale) and colour are albumentations transforms; keypoints travel with
    `KeypointParams(format="xy", remove_invisible=False)`. The horizontal flip is done here, outside
    albumentations, because the keypoint labels must be permuted (left <-> right) when it happens.
    albumentations treats keypoints in pixel-index coordinates (pixel centre at integer x), so we pass
    x - 0.5 and add 0.5 back; the labels then match the warped pixels to ~0.05 px.

    Randomness: pass `rng` (a numpy Generator) for reproducible results; without it each call draws fresh
    OS entropy, which is also safe in forked DataLoader workers (no shared generator state).
    The albumentations pipeline is built lazily so that pickling to workers ships only the config.
    """

    def __init__(self, cfg: AugmentConfig, skeleton: Skeleton):
        self.cfg = cfg
        self.skeleton = skeleton
        self.flip_perm = skeleton.flip_permutation()
        self._compose = None
        self._geometric = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compose"] = None
        return state

    def _build(self):
        # albumentations queries PyPI for a newer version on import (a blocking network call, which also
        # fails offline and warns); the project never wants that.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        import cv2

        c = self.cfg
        ops = []
        self._geometric = bool(c.rotate or c.shift or tuple(c.scale) != (1.0, 1.0))
        if self._geometric:
            ops.append(
                A.Affine(
                    rotate=(-c.rotate, c.rotate),
                    translate_percent={"x": (-c.shift, c.shift), "y": (-c.shift, c.shift)},
                    scale=tuple(c.scale),
                    keep_ratio=True,
                    interpolation=cv2.INTER_LINEAR,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    p=1.0,
                )
            )
        if tuple(c.brightness) != (1.0, 1.0) or tuple(c.contrast) != (1.0, 1.0):
            ops.append(
                A.ColorJitter(
                    brightness=tuple(c.brightness),
                    contrast=tuple(c.contrast),
                    saturation=(1.0, 1.0),
                    hue=(0.0, 0.0),
                    p=1.0,
                )
            )
        if c.grayscale:
            ops.append(A.ToGray(num_output_channels=3, p=1.0))
        kp_params = A.KeypointParams(format="xy", remove_invisible=False) if self._geometric else None
        return A.Compose(ops, keypoint_params=kp_params)

    def __call__(
        self, image: np.ndarray, people: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the augmented (uint8 image, people (M, K, 3)); keypoints that leave the image get v = 0.

        People with no labelled keypoint left are dropped, so M <= N. The image keeps its size.
        """
        if rng is None:
            rng = np.random.default_rng()
        if self._compose is None:
            self._compose = self._build()
        people = np.array(people, dtype=np.float32).reshape(-1, self.skeleton.num_keypoints, 3)
        h, w = image.shape[:2]
        if rng.random() < self.cfg.hflip:
            image = np.ascontiguousarray(image[:, ::-1])
            people[..., 0] = w - people[..., 0]
            people = people[:, self.flip_perm]
        seed = int(rng.integers(0, 2**63 - 1))
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if self._geometric:
            out = self._compose(image=image, keypoints=people[..., :2].reshape(-1, 2) - 0.5)
            people[..., :2] = (
                np.asarray(out["keypoints"], dtype=np.float32).reshape(people.shape[:2] + (2,)) + 0.5
            )
        else:
            out = self._compose(image=image)
        image = out["image"]
        return image, _clean_people(people, image.shape[1], image.shape[0])


def _clean_people(people: np.ndarray, w: int, h: int) -> np.ndarray:
    """Return `people` with keypoints outside [0, w) x [0, h) unlabelled (v = 0, coords 0), empty people dropped."""
    x, y = people[..., 0], people[..., 1]
    keep = (people[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < w) & (y < h)
    people = people.copy()
    people[~keep] = 0.0
    return people[keep.any(axis=1)]


def build_augmentation(cfg: AugmentConfig, skeleton: Skeleton) -> Augmenter:
    """Return a callable `(image uint8 RGB, people (N, K, 3)[, rng]) -> (image, people)` applying `cfg`."""
    return Augmenter(cfg, skeleton)


def _resize_long(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    import cv2

    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    h, w = image.shape[:2]
    scale = size / max(w, h)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    if (nw, nh) != (w, h):
        # INTER_AREA averages when shrinking (no aliasing); LINEAR when enlarging (AREA is blocky there).
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return image, scale


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Return (uint8 (size, size, 3) image, scale): long side resized to `size`, zero padding bottom/right.

    Image coordinates map to the output as x_out = x * scale (scale = size / max(w, h)). The short side is
    rounded to whole pixels, so along it the true factor differs from `scale` by < 0.5 / size (< 0.5 px).
    """
    resized, scale = _resize_long(image, size)
    out = np.zeros((size, size, 3), np.uint8)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out, scale


def _centred(image: np.ndarray, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Return (canvas, scale, offset): the resized image pasted at the centre; x_out = x * scale + offset."""
    resized, scale = _resize_long(image, size)
    h, w = resized.shape[:2]
    ox, oy = (size - w) // 2, (size - h) // 2
    out = np.zeros((size, size, 3), np.uint8)
    out[oy : oy + h, ox : ox + w] = resized
    return out, scale, np.array([ox, oy], np.float32)


class PoseDataset(Dataset):
    """Images of a COCO keypoint data set as network inputs with OpenPose targets.

    Items are dicts: `image` float32 (3, S, S) in [0, 1]; `heatmaps` (K+1, S/8, S/8) and `pafs`
    (2L, S/8, S/8) float32 (stride from `targets`); `image_id` int; `scale` float (network input =
    image * scale; with augmentation only approximate, the affine is not undone).
    Picklable and without open handles, so it works with DataLoader(num_workers > 0). Augmentation
    randomness is drawn from torch's generator, which DataLoader seeds differently per worker and per epoch,
    so `torch.manual_seed` makes a run reproducible.
    """

    def __init__(
        self,
        coco: CocoKeypoints,
        input_size: int = INPUT_SIZE,
        targets: TargetConfig = TargetConfig(),
        augment: AugmentConfig | None = None,
        image_ids: list[int] | None = None,
        grayscale: bool = False,
    ):
        if input_size <= 0 or input_size % targets.stride:
            raise ConfigError(
                f"--input-size must be a positive multiple of the stride {targets.stride}, got {input_size}"
            )
        self.skeleton = coco.skeleton
        self.input_size = int(input_size)
        self.targets = targets
        self.grayscale = grayscale
        ids = coco.image_ids if image_ids is None else [int(i) for i in image_ids]
        frames = [coco.frame(i) for i in ids]
        self.image_ids = ids
        self.paths = [coco.image_path(f) for f in frames]
        self.keypoints = [f.keypoints.astype(np.float32) for f in frames]
        self.augment = build_augmentation(augment, self.skeleton) if augment is not None else None

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Return (uint8 (S, S, 3) network input, people (N, K, 3) in its coordinates, scale) of item `i`."""
        image = read_image(self.paths[i], grayscale=self.grayscale)
        people = self.keypoints[i].copy()
        size = self.input_size
        if self.augment is None:
            canvas, scale = letterbox(image, size)
            offset = np.zeros(2, np.float32)
        else:
            canvas, scale, offset = _centred(image, size)
        lab = people[..., 2] > 0
        people[..., :2] = np.where(lab[..., None], people[..., :2] * np.float32(scale) + offset, 0.0)
        if self.augment is not None:
            if rng is None:
                # torch's generator is seeded per worker and per epoch by DataLoader.
                rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            canvas, people = self.augment(canvas, people, rng)
        else:
            people = _clean_people(people, size, size)
        return canvas, people, float(scale)

    def __getitem__(self, i: int) -> dict[str, Any]:
        canvas, people, scale = self.sample(i)
        heatmaps, pafs = encode_targets(
            people, self.skeleton, (self.input_size, self.input_size), self.targets
        )
        # HWC uint8 -> CHW float in numpy: several times faster than torch's permute().float() here.
        image = torch.from_numpy(
            np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) * np.float32(1 / 255)
        )
        return {
            "image": image,
            "heatmaps": torch.from_numpy(heatmaps),
            "pafs": torch.from_numpy(pafs),
            "image_id": int(self.image_ids[i]),
            "scale": scale,
        }


# Every item has the same tensor shapes, so torch's default_collate batches them.
collate = torch.utils.data.default_collate
