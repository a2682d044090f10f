"""Inference: letterbox, forward, decode and map people back to image coordinates; TTA data and overlays.

People are (N, K, 3) float32 arrays of (x, y, v) in COCO pixel coordinates of the image given to the
model; for predictions v is the part confidence (0 and coordinates 0 = part not found), and each person
has a score. Image decoding runs in a small thread pool (OpenCV releases the GIL) so that reading
overlaps the forward pass.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np
import torch

from ..config import INPUT_SIZE, parse_scale
from ..errors import ConfigError
from ..fileio import read_image
from .coco import CocoKeypoints, Frame
from .skeleton import Skeleton
from .tta import TTA, get_tta

LOG = logging.getLogger(__name__)

Prediction = tuple[np.ndarray, np.ndarray]


# --- ground truth and images after a TTA ----------------------------------------------------------------
def tta_frame(frame: Frame, tta: str | TTA) -> Frame:
    """Return a copy of `frame` whose people are moved as the TTA moves the image (same size and ids)."""
    t = get_tta(tta)
    kps = t.points(frame.keypoints, frame.width, frame.height)
    return replace(
        frame, keypoints=np.asarray(kps, np.float32).copy(), annotation_ids=list(frame.annotation_ids)
    )


def tta_ground_truth(coco: CocoKeypoints, tta: str | TTA = "clean") -> CocoKeypoints:
    """Return `coco` with every frame's people as they appear after the TTA (no image is read)."""
    return replace(coco, frames=[tta_frame(f, tta) for f in coco.frames])


def _load(coco: CocoKeypoints, frame: Frame, t: TTA) -> tuple[Frame, np.ndarray]:
    image = read_image(coco.image_path(frame))
    h, w = image.shape[:2]
    if (w, h) != (frame.width, frame.height):
        LOG.warning(
            "image id %s (%s): file is %dx%d but the annotations say %dx%d; predictions use the file's size",
            frame.image_id, frame.file_name, w, h, frame.width, frame.height,
        )  # fmt: skip
    image, kps = t(image, frame.keypoints)
    return replace(
        frame, keypoints=np.asarray(kps, np.float32), annotation_ids=list(frame.annotation_ids)
    ), image


def iter_tta_samples(
    coco: CocoKeypoints, tta: str | TTA = "clean", num_workers: int = 2, prefetch: int = 16
) -> Iterator[tuple[Frame, np.ndarray]]:
    """Yield (frame with augmented GT people, augmented RGB uint8 image) for every frame of `coco`, in order.

    Images are read and augmented by `num_workers` threads, at most `prefetch` ahead (0 workers: inline).
    """
    t = get_tta(tta)
    if num_workers <= 0:
        for f in coco.frames:
            yield _load(coco, f, t)
        return
    frames = iter(coco.frames)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="activepose-read") as pool:
        pending: deque[Future] = deque(
            pool.submit(_load, coco, f, t) for f in islice(frames, max(1, prefetch))
        )
        try:
            while pending:
                fut = pending.popleft()
                nxt = next(frames, None)
                if nxt is not None:
                    pending.append(pool.submit(_load, coco, nxt, t))
                yield fut.result()
        finally:
            for fut in pending:  # stopped early or failed: do not read the rest
                fut.cancel()


# --- input scale ----------------------------------------------------------------------------------------
MAX_INPUT_FACTOR = 4  # per-image input sides are capped at this many times the model's input size
_STRIDE = 8


def median_train_scale(sizes: Iterable[tuple[int, int]], input_size: int) -> float | None:
    """Return the median over (width, height) of input_size / long side: how much training shrank images.

    None when there are no sizes. This is the pixel scale a model learnt people at (LSPET's 256-px images at
    input 128 -> 0.5).
    """
    ratios = [input_size / max(w, h) for w, h in sizes if max(w, h) > 0]
    return float(np.median(ratios)) if ratios else None


@dataclass(frozen=True)
class InputScale:
    """How large each image enters the network (a square letterbox, zero padding bottom/right).

    - policy "fixed" (`factor` None): every image is letterboxed to `input_size` (long side = input_size).
    - policy "auto" (factor = the model's training scale) or "factor" (a given factor): image of long side
      L gets the input side ceil(L * factor / 8) * 8, at least 8 and at most `max_size` (default
      `MAX_INPUT_FACTOR` x input_size), so people keep the pixel scale the factor gives them.
    Coordinates map back exactly as for a fixed size: divide by the letterbox scale (side / L).
    """

    input_size: int = INPUT_SIZE
    factor: float | None = None
    policy: str = "fixed"
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.input_size < _STRIDE or self.input_size % _STRIDE:
            raise ConfigError(f"--input-size must be a positive multiple of 8, got {self.input_size}")
        if self.factor is not None and not (math.isfinite(self.factor) and self.factor > 0):
            raise ConfigError(f"the input scale factor must be > 0, got {self.factor}")
        if self.policy not in ("fixed", "auto", "factor"):
            raise ConfigError(f"unknown scale policy {self.policy!r}")

    @classmethod
    def resolve(
        cls, scale: str | float | None, input_size: int, train_scale: float | None
    ) -> tuple[InputScale, str | None]:
        """Return (the policy for `--scale` value `scale`, a note to show or None).

        None (not given) means auto when the model records its training scale, else fixed. auto without a
        recorded training scale (a checkpoint older than that record) falls back to fixed, and the note
        says so.
        """
        scale = parse_scale(scale)
        if scale == "fixed" or (scale is None and train_scale is None):
            return cls(input_size), None
        if isinstance(scale, float):
            return cls(input_size, scale, "factor"), None
        if train_scale is None:
            return cls(input_size), (
                "the model does not record the scale it was trained at (an older checkpoint): "
                f"--scale auto falls back to fixed ({input_size} px for every image)"
            )
        return cls(input_size, float(train_scale), "auto"), None

    @property
    def cap(self) -> int:
        return self.max_size or MAX_INPUT_FACTOR * self.input_size

    def size_for(self, width: int, height: int) -> int:
        """Return the network input side for an image of `width` x `height` (capped: see `capped`)."""
        if self.factor is None:
            return self.input_size
        want = math.ceil(max(width, height) * self.factor / _STRIDE - 1e-9) * _STRIDE
        return int(min(max(want, _STRIDE), self.cap))

    def capped(self, width: int, height: int) -> bool:
        """True when the image would need a larger input than `cap` (its people end up smaller)."""
        return self.factor is not None and max(width, height) * self.factor > self.cap + 1e-9

    def summary(self, sizes: Iterable[tuple[int, int]]) -> dict:
        """Return {"policy", "factor", "input_sizes": {"min", "median", "max"}, "capped"} for these images."""
        dims = list(sizes)
        sides = [self.size_for(w, h) for w, h in dims]
        stats = (
            {"min": int(min(sides)), "median": float(np.median(sides)), "max": int(max(sides))}
            if sides
            else {}
        )
        return {"policy": self.policy, "factor": self.factor, "input_sizes": stats,
                "capped": sum(self.capped(w, h) for w, h in dims)}  # fmt: skip


def describe_scale(info: dict) -> str:
    """Return one line for a `summary` dict, e.g. "auto (x0.50 of each image, network input 128-512 px)"."""
    sizes = info.get("input_sizes") or {}
    span = (
        f"{sizes['min']} px"
        if sizes and sizes["min"] == sizes["max"]
        else f"{sizes['min']}-{sizes['max']} px"
        if sizes
        else "no images"
    )
    if info.get("factor") is None:
        return f"{info['policy']} (every image letterboxed to {span})"
    capped = f"; {info['capped']} image(s) capped" if info.get("capped") else ""
    return f"{info['policy']} (x{info['factor']:.2f} of each image, network input {span}{capped})"


# --- inference ------------------------------------------------------------------------------------------
def model_device(model: torch.nn.Module) -> torch.device:
    """Return the device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def predict_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    decoder,
    input_size: int = INPUT_SIZE,
    device: str | torch.device | None = None,
    scale: InputScale | None = None,
) -> list[Prediction]:
    """Return (people (N, K, 3), scores (N,)) per image, in that image's pixel coordinates.

    Each image is letterboxed to its network input side (long side scaled to it, zero padding bottom/right):
    `input_size` for every image, or per image as `scale` says (an `InputScale`; it replaces `input_size`).
    Images of the same side go through one forward pass (one pass per distinct side); the last stage's
    heatmaps and PAFs are decoded, and the people are mapped back by dividing by the letterbox scale, then
    clipped to [0, W] x [0, H]. Parts not found keep v = 0 and coordinates 0. The model runs in eval mode;
    its previous mode is restored. `device` is where the inputs go (None: the device of the model's first
    parameter, else CPU); the model is not moved.
    """
    if len(images) == 0:
        return []
    if scale is None:
        if input_size % 8:
            raise ValueError(f"input_size must be a multiple of 8, got {input_size}")
        scale = InputScale(input_size)
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    groups: dict[int, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(scale.size_for(image.shape[1], image.shape[0]), []).append(i)
    device = model_device(model) if device is None else torch.device(device)
    out: list[Prediction | None] = [None] * len(images)
    for side, idx in groups.items():
        for i, pred in zip(
            idx, _predict_at(model, [images[i] for i in idx], decoder, side, device), strict=True
        ):
            out[i] = pred
    return out  # type: ignore[return-value]


def _predict_at(
    model: torch.nn.Module, images: Sequence[np.ndarray], decoder, side: int, device: torch.device
) -> list[Prediction]:
    """One forward pass of `images`, each letterboxed to `side`; people mapped back to image coordinates."""
    from .data import letterbox

    padded, scales = [], []
    for image in images:
        p, s = letterbox(image, side)
        padded.append(p)
        scales.append(float(s))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # Transfer uint8 (4x less than float) and normalise on the device.
            x = torch.from_numpy(np.stack(padded)).to(device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            heatmaps, pafs = model(x)[-1]
            decoded = decoder(heatmaps, pafs)
    finally:
        model.train(was_training)
    out: list[Prediction] = []
    for image, scale, (kps, scores) in zip(images, scales, decoded, strict=True):
        h, w = image.shape[:2]
        kps = np.array(kps, dtype=np.float32, copy=True)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if kps.size:
            kps[..., :2] /= scale
            kps[..., 0] = np.clip(kps[..., 0], 0.0, float(w))
            kps[..., 1] = np.clip(kps[..., 1], 0.0, float(h))
            kps[kps[..., 2] <= 0] = 0.0
        out.append((kps, scores))
    return out


def predict_stream(
    model: torch.nn.Module,
    items: Iterable[tuple[object, np.ndarray]],
    decoder,
    scale: InputScale,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_pending: int | None = None,
) -> Iterator[list[tuple[object, np.ndarray, Prediction]]]:
    """Yield batches [(key, image, prediction)] for (key, RGB image) items, batched by network input side.

    Images wait in one bucket per input side; a bucket goes through the network when it holds `batch_size`
    images, or (the largest one) when `max_pending` images wait in all (default 4 x batch_size), and the
    rest at the end. With a fixed size this is plain batching in order. Images capped at `scale.cap` are
    counted and logged once at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = max(batch_size, max_pending or 4 * batch_size)
    device = model_device(model) if device is None else torch.device(device)
    buckets: dict[int, list[tuple[object, np.ndarray]]] = {}
    pending = capped = 0

    def flush(side: int) -> list[tuple[object, np.ndarray, Prediction]]:
        nonlocal pending
        batch = buckets.pop(side)
        pending -= len(batch)
        preds = _predict_at(model, [img for _, img in batch], decoder, side, device)
        return [(key, img, pred) for (key, img), pred in zip(batch, preds, strict=True)]

    for key, image in items:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        capped += scale.capped(w, h)
        side = scale.size_for(w, h)
        buckets.setdefault(side, []).append((key, image))
        pending += 1
        if len(buckets[side]) >= batch_size:
            yield flush(side)
        elif pending >= limit:
            yield flush(max(buckets, key=lambda s: len(buckets[s])))
    for side in sorted(buckets):
        yield flush(side)
    if capped:
        LOG.warning(
            "%d image(s) would need a network input above %d px at x%.3g: letterboxed to %d px, so their "
            "people are smaller than in training", capped, scale.cap, scale.factor, scale.cap,
        )  # fmt: skip


def predict_coco(
    model: torch.nn.Module,
    coco: CocoKeypoints,
    decoder,
    input_size: int = INPUT_SIZE,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    tta: str | TTA = "clean",
    progress: Callable[[int], None] | None = None,
    num_workers: int = 2,
    scale: InputScale | None = None,
) -> dict[int, Prediction]:
    """Return {image_id: (people (N, K, 3), scores (N,))} for every image of `coco` after the TTA `tta`.

    Coordinates are those of the augmented image (same size as the original), so compare them with
    `tta_ground_truth(coco, tta)`. `progress(n)` is called after each batch with its number of images.
    `scale` (an `InputScale`; None: `input_size` for every image) sets each image's network input side;
    with per-image sides the images are read in order of their side (from the annotated sizes) so that
    batches stay full. The result is in `coco`'s order either way.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scale = scale or InputScale(input_size)
    ordered = coco
    if scale.factor is not None:
        ordered = replace(coco, frames=sorted(coco.frames, key=lambda f: scale.size_for(f.width, f.height)))
    samples = iter_tta_samples(ordered, tta, num_workers=num_workers, prefetch=2 * batch_size)
    items = ((frame.image_id, image) for frame, image in samples)
    out: dict[int, Prediction] = {}
    for batch in predict_stream(model, items, decoder, scale, batch_size, device):
        for image_id, _, pred in batch:
            out[image_id] = pred
        if progress is not None:
            progress(len(batch))
    return {f.image_id: out[f.image_id] for f in coco.frames}


# --- drawing --------------------------------------------------------------------------------------------
def person_colour(i: int) -> tuple[int, int, int]:
    """Return a distinct saturated RGB colour for person `i` (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(
    image: np.ndarray,
    people: np.ndarray,
    skeleton: Skeleton,
    scores: np.ndarray | None = None,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """Return a copy of the RGB `image` with each person's limbs and keypoints drawn in its own colour.

    Keypoints with v <= `min_confidence` are skipped, and so are limbs touching them; a person's score,
    when given, is written above its topmost keypoint.
    """
    import cv2

    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    if canvas.ndim == 2:
        canvas = np.repeat(canvas[:, :, None], 3, axis=2)
    people = np.asarray(people, dtype=np.float64).reshape(-1, skeleton.num_keypoints, 3)
    h, w = canvas.shape[:2]
    thick = max(1, round(max(h, w) / 256))
    radius = thick + 1
    for i, kps in enumerate(people):
        colour = person_colour(i)
        ok = kps[:, 2] > min_confidence
        # cv2 pixel centres are at integers; COCO coordinates put them at +0.5.
        pts = [(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in kps[:, :2]]
        for a, b in skeleton.limbs:
            if ok[a] and ok[b]:
                cv2.line(canvas, pts[a], pts[b], colour, thick, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(canvas, pts[j], radius, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, pts[j], radius, (0, 0, 0), 1, cv2.LINE_AA)
        if scores is not None and ok.any() and i < len(scores):
            top = int(np.argmin(np.where(ok, kps[:, 1], np.inf)))
            org = (pts[top][0], max(10, pts[top][1] - 2 * radius - 2))
            cv2.putText(
                canvas, f"{float(scores[i]):.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, thick
            )
    return canvas
