"""Heatmap-peak uncertainty of pool images (the paper's uncertainty filter), batched and cached.

Per image and keypoint the *peak* is the maximum of the model's last-stage heatmap after the decoder's
Gaussian smoothing (`activepose.pose.fields.heatmap`, sigma `DecoderConfig.smooth_sigma`), taken over the
cells that show image content: letterbox padding (bottom/right, black) is masked out, because a peak
there is no keypoint the decoder could return (it would be clipped onto the image border) yet would make
the image look confident. A keypoint is *confident* when its peak >= thHM; an image is *uncertain* when
fewer than thKP keypoints are confident (paper: thHM = 0.3, thKP = 6 of 18 heatmaps).

thKP for other skeletons scales with the keypoint count: `keypoint_threshold(K) = max(1, round(6 K / 18))`,
i.e. the same third of the keypoints (lsp14 -> 5, coco17 -> 6, coco18 -> 6).

The continuous score (higher = more uncertain) ranks images and breaks ties:

    score = uncertain + 0.8 * (1 - clip(m, 0, 1)) + 0.2 * (1 - mean_k clip(peak_k, 0, 1))

where m is the thKP-th largest peak (the image is certain iff m >= thHM, so m measures how far it is from
the filter's boundary) and the mean over all keypoints separates images with the same m. The two terms lie
in [0, 1] and are < 1 for a certain image (m >= thHM > 0), so every uncertain image (score in [1, 2])
ranks above every certain one (score in [0, 1)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TH_HM, UncertaintyConfig
from ..errors import ConfigError
from ..fileio import read_image
from ..pose.cache import VectorCache, batched, hash_files, model_fingerprint, prefetch_map
from ..pose.coco import CocoKeypoints
from ..pose.data import letterbox
from ..pose.fields.heatmap import peak_confidences, single_threaded, smooth_heatmaps

LOG = logging.getLogger(__name__)

PAPER_TH_KP = 6
PAPER_NUM_HEATMAPS = 18
_W_MARGIN, _W_MEAN = 0.8, 0.2
_FLUSH_ROWS = 1024


def keypoint_threshold(num_keypoints: int, th_kp: int | None = None) -> int:
    """Return thKP for a skeleton of `num_keypoints`: `th_kp` when given (1 <= th_kp <= K), else the paper's
    6-of-18 scaled to K: max(1, round(6 K / 18)) (14 -> 5, 17 -> 6, 18 -> 6)."""
    k = int(num_keypoints)
    if k < 1:
        raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
    if th_kp is None:
        return max(1, round(PAPER_TH_KP * k / PAPER_NUM_HEATMAPS))
    if not 1 <= int(th_kp) <= k:
        raise ConfigError(
            f"--th-kp must be between 1 and the number of keypoints ({k}), got {th_kp}: an image can never "
            f"have more than {k} confident keypoints"
        )
    return int(th_kp)


def score_peaks(
    peaks: np.ndarray, cfg: UncertaintyConfig = UncertaintyConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (confident (N,) int64, uncertain (N,) bool, score (N,) float64) for peaks (N, K).

    See the module doc for the score; thKP is `keypoint_threshold(K, cfg.th_kp)`.
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    if peaks.ndim != 2:
        raise ValueError(f"peaks must be (N, K), got shape {peaks.shape}")
    n, k = peaks.shape
    th_kp = keypoint_threshold(k, cfg.th_kp)
    confident = (peaks >= cfg.th_hm).sum(axis=1).astype(np.int64)
    uncertain = confident < th_kp
    if n == 0:
        return confident, uncertain, np.zeros(0)
    clipped = np.clip(peaks, 0.0, 1.0)
    m = -np.partition(-clipped, th_kp - 1, axis=1)[:, th_kp - 1]  # th_kp-th largest
    score = uncertain + _W_MARGIN * (1.0 - m) + _W_MEAN * (1.0 - clipped.mean(axis=1))
    return confident, uncertain, score


@dataclass
class PoolUncertainty:
    """Per pool image (rows in `image_ids` order): peaks (N, K) and the filter's verdict and score."""

    image_ids: np.ndarray
    peaks: np.ndarray
    confident: np.ndarray
    uncertain: np.ndarray
    score: np.ndarray
    th_hm: float = TH_HM
    th_kp: int = PAPER_TH_KP
    cache_hits: int = field(default=0)

    @property
    def num_uncertain(self) -> int:
        return int(self.uncertain.sum())

    def ranking(self) -> np.ndarray:
        """Return row indices from most to least uncertain (stable: equal scores keep pool order)."""
        return np.argsort(-self.score, kind="stable")


def masked_peak_confidences(heatmaps: torch.Tensor, valid_hw: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return (B, K) peaks of (B, K+1, h, w) maps after smoothing, over the top-left `valid_hw[b]` cells.

    `valid_hw` (B, 2) holds per image the rows and columns of output cells that show image content; the
    rest is letterbox padding. Equals `peak_confidences` when nothing is padded.
    """
    b, _, h, w = heatmaps.shape
    valid_hw = valid_hw.to(heatmaps.device)
    if bool((valid_hw[:, 0] >= h).all() and (valid_hw[:, 1] >= w).all()) or heatmaps.shape[1] < 2:
        return peak_confidences(heatmaps, sigma)
    with single_threaded(heatmaps):
        sm = smooth_heatmaps(heatmaps[:, :-1], sigma)
        rows = torch.arange(h, device=sm.device)[None, :] < valid_hw[:, :1]
        cols = torch.arange(w, device=sm.device)[None, :] < valid_hw[:, 1:]
        mask = (rows[:, :, None] & cols[:, None, :])[:, None]
        return sm.masked_fill(~mask, -torch.inf).amax(dim=(2, 3))


def _load_letterboxed(path: Path, size: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    image = read_image(path)
    h, w = image.shape[:2]
    padded, scale = letterbox(image, size)
    ch, cw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    return padded, (-(-ch // stride), -(-cw // stride))  # cells overlapping content (ceil)


def uncertainty_cache_key(model_key: str, cfg: UncertaintyConfig) -> str:
    """Return the cache key of peaks of a model (`model_key`) at the config's input size and smoothing."""
    return f"uncertainty-v1-{model_key}-s{cfg.input_size}-g{cfg.smooth_sigma:g}"


def score_pool(
    model: torch.nn.Module,
    coco: CocoKeypoints,
    cfg: UncertaintyConfig = UncertaintyConfig(),
    image_ids: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    cache: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    model_key: str | None = None,
    num_workers: int = 2,
    engine=None,
) -> PoolUncertainty:
    """Return the uncertainty of every image of `coco` (or of `image_ids`, in that order).

    Images are read and letterboxed to `cfg.input_size` by `num_workers` threads while the model runs
    batches of `cfg.batch_size` in eval mode under `torch.inference_mode` (its mode is restored; it is not
    moved: `device`, default the model's, is where inputs go). With `cache` (a directory), peaks are stored
    per (model identity, image content hash, input size, sigma) and only misses are computed. The model
    identity is `model_key` when given (e.g. a checkpoint path + mtime: cheaper, but the caller must change
    it when the weights change), else `model_fingerprint(model)`, a hash of its state dict.
    `progress(n)` is called with the number of images done (cache hits first, then per batch).
    """
    ids = [f.image_id for f in coco.frames] if image_ids is None else [int(i) for i in image_ids]
    k = check_keypoints(model, coco)
    th_kp = keypoint_threshold(k, cfg.th_kp)
    sigma = cfg.smooth_sigma

    def peaks_of(net, x, valid):
        return masked_peak_confidences(net(x)[-1][0].float(), valid, sigma)

    peaks, hits = scan_pool(
        model, coco, ids, cfg, peaks_of, k, lambda key: uncertainty_cache_key(key, cfg), device=device,
        cache=cache, progress=progress, model_key=model_key, num_workers=num_workers, engine=engine,
    )  # fmt: skip
    cfg_k = UncertaintyConfig(cfg.th_hm, th_kp, cfg.smooth_sigma, cfg.input_size, cfg.batch_size)
    confident, uncertain, score = score_peaks(peaks, cfg_k)
    return PoolUncertainty(
        image_ids=np.asarray(ids, np.int64),
        peaks=peaks,
        confident=confident,
        uncertain=uncertain,
        score=score,
        th_hm=cfg.th_hm,
        th_kp=th_kp,
        cache_hits=hits,
    )


def _batch_stat(model, stat, samples: Sequence[tuple[np.ndarray, tuple[int, int]]], device) -> np.ndarray:
    """`stat` of one batch of (letterboxed HWC uint8 image, valid cells): the computation both engines run."""
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([img for img, _ in samples])).to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        valid = torch.tensor([v for _, v in samples], dtype=torch.long)
        out = stat(model, x, valid)
    return out.float().cpu().numpy()


def _shippable(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of `model` in eval mode, to send to remote workers."""
    import copy

    from ..pose.predict import model_device

    if model_device(model).type == "cpu":
        return model
    return copy.deepcopy(model).to("cpu")


class _StatWorker:
    """A remote engine's worker: reads and letterboxes a batch of images, runs `stat` on the model (on the
    worker's GPU when it has one)."""

    def __init__(self, model: torch.nn.Module, stat, size: int, stride: int) -> None:
        self.model, self.stat, self.size, self.stride = model, stat, size, stride
        self.device = torch.device("cpu")

    def setup(self) -> None:
        if torch.cuda.is_available():
            self.device = torch.device("cuda")
            self.model = self.model.to(self.device)
        self.model.eval()

    def __call__(self, paths: list[str]) -> np.ndarray:
        samples = [_load_letterboxed(Path(p), self.size, self.stride) for p in paths]
        return _batch_stat(self.model, self.stat, samples, self.device)


def check_keypoints(model: torch.nn.Module, coco: CocoKeypoints) -> int:
    """Return the model's keypoint count; ValueError when it is not the data set's."""
    k = int(getattr(model, "num_keypoints", coco.skeleton.num_keypoints))
    if k != coco.skeleton.num_keypoints:
        raise ValueError(
            f"model has {k} keypoints but {coco.path or 'the data set'} has {coco.skeleton.num_keypoints}"
        )
    return k


def scan_pool(
    model: torch.nn.Module,
    coco: CocoKeypoints,
    ids: Sequence[int],
    cfg: UncertaintyConfig,
    stat: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    width: int,
    cache_key: Callable[[str], str],
    *,
    device: str | torch.device | None = None,
    cache: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    model_key: str | None = None,
    num_workers: int = 2,
    engine=None,
) -> tuple[np.ndarray, int]:
    """Return ((len(ids), width) float32 values of `stat` per image, cache hits): the batched, cached pass of
    a model over pool images that `score_pool` and the other per-image model signals share.

    `stat(model, x, valid_hw)` gets a batch of letterboxed inputs x (B, 3, S, S) in [0, 1] and the output cells
    showing content (B, 2), and returns (B, width). With `cache`, values are stored under
    `cache_key(model identity)` per image content hash; what was computed is kept even when a batch fails.
    `engine` (`activepose.sampling.engine`): where the batches that miss the cache are computed (None or
    local: here; ray: on a Ray cluster, the same batches, written here to the same cache).
    """
    from ..pose.predict import model_device

    paths = [coco.image_path(i) for i in ids]
    stride = int(getattr(model, "stride", 8))
    if cfg.input_size % stride:
        raise ValueError(f"input_size {cfg.input_size} is not a multiple of the model stride {stride}")
    values = np.zeros((len(ids), width), np.float32)
    todo = np.ones(len(ids), bool)
    store: VectorCache | None = None
    hashes: list[str] = []
    if cache is not None and ids:
        hashes = hash_files(paths, num_workers=max(1, num_workers))
        store = VectorCache(cache, cache_key(model_key or model_fingerprint(model)), width)
        found, vecs = store.lookup(hashes)
        values[found] = vecs[found]
        todo = ~found
        if progress is not None and found.any():
            progress(int(found.sum()))
    rows = np.flatnonzero(todo)
    device = model_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    pending: list[int] = []
    try:
        if engine is not None and engine.remote:  # the engine's workers read the images
            chunks = [rows[i : i + cfg.batch_size].tolist() for i in range(0, len(rows), cfg.batch_size)]
            worker = _StatWorker(_shippable(model), stat, cfg.input_size, stride)
            computed = (
                (chunks[k], out)
                for k, out in engine.map(worker, [[str(paths[r]) for r in c] for c in chunks])
            )
        else:
            samples = prefetch_map(
                lambda r: (r, *_load_letterboxed(paths[r], cfg.input_size, stride)),
                rows.tolist(),
                num_workers=num_workers,
                prefetch=2 * cfg.batch_size,
            )
            computed = (
                (
                    [r for r, _, _ in batch],
                    _batch_stat(model, stat, [(img, v) for _, img, v in batch], device),
                )
                for batch in batched(samples, cfg.batch_size)
            )
        for idx, out in computed:
            values[idx] = out
            pending.extend(idx)
            if store is not None and len(pending) >= _FLUSH_ROWS:
                store.add([hashes[r] for r in pending], values[pending])
                pending = []
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
        if store is not None:
            if pending:  # also on failure: what was computed is kept
                store.add([hashes[r] for r in pending], values[pending])
            store.close()
    return values, int(len(ids) - len(rows))
