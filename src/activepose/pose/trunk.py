"""Frozen-trunk training: the ImageNet trunk's features computed once per network input, cached, and cropped.

With `TrainConfig.frozen_trunk` the backbone's body (the ImageNet-pretrained part) is never trained: only the
neck and the OpenPose stages are. The body's output for a given network input then never changes, so a
`TrunkCache` attached to the model (`attach_trunk_cache`) keeps it in a float16 `VectorCache` keyed by the
trunk's weights, the input's shape and the sha1 of the input tensor's bytes. Training sessions, uncertainty
scoring of the pool and evaluation all go through `PoseNet.trunk`, so every later epoch, round, seed and
strategy of a simulation reads the features back instead of running the trunk again. Features are rounded to
float16 whether they come from the cache or were just computed, so a result does not depend on the cache's
state.

Training samples are `train_crop` x `train_crop` pixel windows of the feature maps (and of the targets)
around a random person, with a random shift: the heads learn people at the scale of the whole `input_size`
image (the network sees whole images when predicting) while a step costs what a `train_crop`-pixel image
costs. The only augmentations are that window and a horizontal flip (whose features are cached too): the
trunk's input is fixed, so rotation, zoom and colour changes are not available in this mode.

What each part buys on LSPET with 2 CPU cores: `benchmarks/cpu_training.py`, figures in docs/training.md.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import TargetConfig
from ..fileio import read_image
from .coco import CocoKeypoints
from .data import _clean_people, letterbox
from .fields import encode_targets

LOG = logging.getLogger(__name__)

TRUNK_CACHE_VERSION = 1


def default_feature_cache() -> Path:
    """Return the default folder of cached trunk features (`$XDG_CACHE_HOME/activepose/trunk`)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "activepose" / "trunk"


class TrunkCache:
    """Computes a frozen trunk's features once per network input and reads them back afterwards.

    Called with a normalised input batch (B, 3, H, W) (what `PoseNet._prepare` returns); returns the body's
    output (B, C, H/s, W/s) float32 on the input's device, rounded through float16. One cache directory per
    (trunk weights, H x W, autocast dtype) under `cache_dir`; rows are keyed by the sha1 of each input's
    float32 bytes.
    Holds no open handles between calls (models are copied and pickled).
    """

    def __init__(self, model, cache_dir: str | Path | None = None) -> None:
        from .cache import model_fingerprint

        self.model = model
        self.body = model.trunk_part()
        self.channels = trunk_channels(model)
        self.stride = int(model.stride)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_feature_cache()
        name = model.config.get("backbone", "trunk")
        # Keyed by the frozen part's weights only: blocks trained after it (--train-blocks) change every step.
        self.key = f"trunk-v{TRUNK_CACHE_VERSION}-{name}-{model_fingerprint(self.body)[:16]}"
        self.hits = self.misses = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .cache import VectorCache

        b, _, h, w = x.shape
        shape = (self.channels, h // self.stride, w // self.stride)
        dim = int(np.prod(shape))
        host = x.detach().float().cpu().contiguous()
        hashes = [hashlib.sha1(host[i].numpy().tobytes()).hexdigest() for i in range(b)]
        # The arithmetic the features were computed in is part of the key (bf16 features differ from fp32 ones).
        maths = str(self.model.autocast_dtype or torch.float32).removeprefix("torch.")
        with VectorCache(self.cache_dir, f"{self.key}-{h}x{w}-{maths}-f16", dim, np.float16) as store:
            found, out = store.lookup(hashes)
            missing = np.flatnonzero(~found)
            if len(missing):
                with torch.no_grad():
                    feats = self.body(x[torch.from_numpy(missing).to(x.device)])
                rows = feats.float().cpu().numpy().astype(np.float16).reshape(len(missing), dim)
                store.add([hashes[i] for i in missing], rows)
                out[missing] = rows
        self.hits += b - len(missing)
        self.misses += len(missing)
        return torch.from_numpy(out.astype(np.float32)).view(b, *shape).to(x.device)


def trunk_channels(model) -> int:
    """Return the channels of `model.trunk()`'s output: the last conv's of the frozen part of the body."""
    convs = [m for m in model.trunk_part().modules() if isinstance(m, torch.nn.Conv2d)]
    return int(convs[-1].out_channels) if convs else int(model.backbone.embed_channels)


def attach_trunk_cache(model, cache_dir: str | Path | None = None, trained_blocks: int = 0) -> TrunkCache:
    """Freeze `model`'s trunk (but its last `trained_blocks` blocks) and route `model.trunk` through a
    `TrunkCache` of the frozen part; returns the cache."""
    model.set_trained_blocks(trained_blocks)
    for p in model.trunk_part().parameters():
        p.requires_grad_(False)
    cache = TrunkCache(model, cache_dir)
    model.trunk_cache = cache
    return cache


def _input(path: Path, size: int, grayscale: bool, flip: bool) -> np.ndarray:
    canvas, _ = letterbox(read_image(path, grayscale=grayscale), size)
    return np.ascontiguousarray(canvas[:, ::-1]) if flip else canvas


def trunk_features(
    model,
    paths: Sequence[str | Path],
    input_size: int,
    flip: bool = False,
    grayscale: bool = False,
    batch_size: int = 16,
    num_workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Return (N, C, G, G) float16 trunk features of `paths` letterboxed to `input_size` (mirrored: `flip`).

    Goes through `model.trunk`, so with a `TrunkCache` attached only inputs never seen are computed.
    """
    from .cache import prefetch_map

    loaded = prefetch_map(lambda p: _input(Path(p), input_size, grayscale, flip), paths, num_workers)
    return canvas_features(model, loaded, len(paths), input_size, batch_size, progress)


def canvas_features(
    model,
    canvases,
    total: int,
    input_size: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Return (N, C, G, G) float16 trunk features of uint8 (S, S, 3) network inputs (an iterable of `total`)."""
    from .cache import batched

    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for batch in batched(canvases, batch_size):
            x = torch.from_numpy(
                np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
            )
            with torch.inference_mode():
                f = model.trunk(x.to(next(model.parameters()).device))
            out.append(f.cpu().numpy().astype(np.float16))
            if progress is not None:
                progress(sum(len(o) for o in out), total)
    finally:
        model.train(was_training)
    g = input_size // model.stride
    return np.concatenate(out) if out else np.zeros((0, trunk_channels(model), g, g), np.float16)


class CachedFeatureDataset(Dataset):
    """Training items from trunk features: {"features", "heatmaps", "pafs", "image_id"}.

    `features` maps flip (False/True) to (N, C, G, G) float16 arrays for `image_ids` in order (True only when
    `hflip` > 0). Each item draws a flip with probability `hflip` and, with `crop` (cells) < G, a crop x crop
    window centred on a random person's labelled keypoints shifted by up to crop/4 cells (clamped inside the
    map); images without people get a random window. Targets are encoded on the whole map, then cropped, so
    features and targets stay aligned.
    """

    def __init__(
        self,
        coco: CocoKeypoints,
        image_ids: Sequence[int],
        features: dict[bool, np.ndarray],
        input_size: int,
        targets: TargetConfig,
        crop: int | None = None,
        hflip: float = 0.0,
        views: Sequence[tuple[np.ndarray, list[np.ndarray]]] = (),
    ) -> None:
        self.skeleton = coco.skeleton
        self.image_ids = [int(i) for i in image_ids]
        self.features = features
        self.input_size = int(input_size)
        self.targets = targets
        self.grid = self.input_size // targets.stride
        self.crop = None if crop is None or crop >= self.grid else int(crop)
        self.hflip = float(hflip) if True in features else 0.0
        self.flip_perm = coco.skeleton.flip_permutation()
        self.people = []
        for i in self.image_ids:
            f = coco.frame(i)
            scale = self.input_size / max(f.width, f.height)
            p = f.keypoints.astype(np.float32).copy()
            lab = p[..., 2] > 0
            p[..., :2] = np.where(lab[..., None], p[..., :2] * np.float32(scale), 0.0)
            self.people.append(_clean_people(p, self.input_size, self.input_size))
        # Augmented views: (features (N, C, G, G), people per image in that view's input coordinates).
        self.views = list(views)

    def __len__(self) -> int:
        return len(self.image_ids)

    def window(self, people: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Return the (row, column) in cells of a crop window's top-left corner for an image's `people`."""
        g, c = self.grid, self.crop
        assert c is not None
        labelled = people[..., 2] > 0
        who = [n for n in range(len(people)) if labelled[n].any()]
        if not who:
            return int(rng.integers(0, g - c + 1)), int(rng.integers(0, g - c + 1))
        n = who[int(rng.integers(len(who)))]
        centre = people[n, labelled[n], :2].mean(axis=0) / self.targets.stride  # (x, y) in cells
        shift = rng.integers(-(c // 4), c // 4 + 1, size=2)
        x0 = int(np.clip(round(float(centre[0]) - c / 2) + shift[0], 0, g - c))
        y0 = int(np.clip(round(float(centre[1]) - c / 2) + shift[1], 0, g - c))
        return y0, x0

    def __getitem__(self, i: int) -> dict[str, Any]:
        # torch's generator: seeded per epoch by the loader, so runs are reproducible.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        view = int(rng.integers(len(self.views) + 1)) if self.views else 0  # 0: the letterboxed input
        if view:
            feats, people = self.views[view - 1][0][i], self.views[view - 1][1][i].copy()
        else:
            people = self.people[i].copy()
            flip = bool(self.hflip > 0 and rng.random() < self.hflip)
            if flip:  # the mirrored letterboxed input: x' = input_size - x, left/right swapped
                labelled = people[..., 2] > 0
                people[..., 0] = np.where(labelled, self.input_size - people[..., 0], 0.0)
                people = people[:, self.flip_perm]
            feats = self.features[flip][i]
        size = (self.input_size, self.input_size)
        heatmaps, pafs = encode_targets(people, self.skeleton, size, self.targets)
        if self.crop is not None:
            y0, x0 = self.window(people, rng)
            box = (slice(None), slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
            feats, heatmaps, pafs = feats[box], heatmaps[box], pafs[box]
        return {
            "features": torch.from_numpy(np.ascontiguousarray(feats)),
            "heatmaps": torch.from_numpy(np.ascontiguousarray(heatmaps)),
            "pafs": torch.from_numpy(np.ascontiguousarray(pafs)),
            "image_id": self.image_ids[i],
        }


def cached_datasets(
    model,
    coco: CocoKeypoints,
    train_ids: Sequence[int],
    val_ids: Sequence[int],
    cfg,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CachedFeatureDataset, CachedFeatureDataset | None]:
    """Return (train, val) datasets of trunk features for a frozen-trunk `TrainConfig` `cfg`."""

    def feats(ids: Sequence[int], flip: bool) -> np.ndarray:
        paths = [coco.image_path(coco.frame(i)) for i in ids]
        return trunk_features(
            model, paths, cfg.input_size, flip, cfg.grayscale, num_workers=max(cfg.num_workers, 2),
            progress=progress,
        )  # fmt: skip

    hflip = cfg.augment.hflip if cfg.augment is not None else 0.0
    crop = None if cfg.train_crop is None else cfg.train_crop // cfg.targets.stride
    train_feats = {False: feats(train_ids, False)}
    if hflip > 0:
        train_feats[True] = feats(train_ids, True)
    views = [augmented_view(model, coco, train_ids, cfg, v, progress) for v in range(1, cfg.cached_views + 1)]
    train = CachedFeatureDataset(
        coco, train_ids, train_feats, cfg.input_size, cfg.targets, crop, hflip, views
    )
    val = None
    if val_ids:
        val = CachedFeatureDataset(coco, val_ids, {False: feats(val_ids, False)}, cfg.input_size, cfg.targets)
    return train, val


def augmented_view(
    model,
    coco: CocoKeypoints,
    image_ids: Sequence[int],
    cfg,
    view: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return (trunk features, people) of augmented view `view` of each image: the training augmentation
    (`cfg.augment`: rotation, zoom, shift, colour, flip) drawn once per (seed, image, view), so the same image
    always gets the same views and their features come from the cache after the first time."""
    from .cache import prefetch_map
    from .data import PoseDataset

    dataset = PoseDataset(coco, input_size=cfg.input_size, targets=cfg.targets, augment=cfg.augment,
                          image_ids=list(image_ids), grayscale=cfg.grayscale)  # fmt: skip
    people: list[np.ndarray] = [np.zeros(0)] * len(dataset)
    local = threading.local()

    def sample(i: int) -> np.ndarray:
        # One augmentation pipeline per thread: albumentations' random state is set per call, so two threads
        # sharing one would draw each other's numbers and a view would not be the same every time.
        if not hasattr(local, "dataset"):
            local.dataset = copy.copy(dataset)
            local.dataset.augment = copy.deepcopy(dataset.augment)
        rng = np.random.default_rng([cfg.seed, dataset.image_ids[i], view])
        canvas, kps, _ = local.dataset.sample(i, rng)
        people[i] = kps
        return canvas

    canvases = prefetch_map(sample, range(len(dataset)), max(cfg.num_workers, 2))
    feats = canvas_features(model, canvases, len(dataset), cfg.input_size, progress=progress)
    return feats, people
