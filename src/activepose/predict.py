"""Inference: letterbox, forward, decode and map people back to image coordinates; TTA data and overlays.

People are (N, K, 3) float32 arrays of (x, y, v) in COCO pixel coordinates of the image given to the
model; for predictions v is the part confidence (0 and coordinates 0 = part not found), and each person
has a score. Image decoding runs in a small thread pool (OpenCV releases the GIL) so that reading
overlaps the forward pass.
"""

from __future__ import annotations

import colorsys
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from itertools import islice

import numpy as np
import torch

from .coco import CocoKeypoints, Frame
from .defaults import INPUT_SIZE
from .fileio import read_image
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


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


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
) -> list[Prediction]:
    """Return (people (N, K, 3), scores (N,)) per image, in that image's pixel coordinates.

    All images go through one forward pass: each is letterboxed to `input_size` (long side scaled to
    `input_size`, zero padding bottom/right), the last stage's heatmaps and PAFs are decoded, and the
    people are mapped back by dividing by the letterbox scale, then clipped to [0, W] x [0, H]. Parts
    not found keep v = 0 and coordinates 0. The model runs in eval mode; its previous mode is restored.
    `device` is where the inputs go (None: the device of the model's first parameter, else CPU); the
    model is not moved.
    """
    from .data import letterbox

    if len(images) == 0:
        return []
    if input_size % 8:
        raise ValueError(f"input_size must be a multiple of 8, got {input_size}")
    padded, scales = [], []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        p, s = letterbox(image, input_size)
        padded.append(p)
        scales.append(float(s))
    device = model_device(model) if device is None else torch.device(device)
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
) -> dict[int, Prediction]:
    """Return {image_id: (people (N, K, 3), scores (N,))} for every image of `coco` after the TTA `tta`.

    Coordinates are those of the augmented image (same size as the original), so compare them with
    `tta_ground_truth(coco, tta)`. `progress(n)` is called after each batch with its number of images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: dict[int, Prediction] = {}
    samples = iter_tta_samples(coco, tta, num_workers=num_workers, prefetch=2 * batch_size)
    for batch in _batches(samples, batch_size):
        preds = predict_images(
            model, [img for _, img in batch], decoder, input_size=input_size, device=device
        )
        for (frame, _), pred in zip(batch, preds, strict=True):
            out[frame.image_id] = pred
        if progress is not None:
            progress(len(batch))
    return out


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
