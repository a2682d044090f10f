"""Training: fit with early stopping, atomic checkpoints, resume, and sessions that continue a model.

A *session* is one training run on one labelled set, with its own fresh train/validation split, its
own learning-rate schedule and early-stopping state (the paper's "training session"). The
active-learning loop starts a new session from the previous session's weights each round.

`run_dir/last.pt` is written atomically after every epoch and holds everything needed to continue
(model, optimiser, scheduler, epoch, early-stopping state, RNG states, history), so a run killed at
any moment resumes with the same command and loses at most the epoch in progress.
`run_dir/best.pt` holds the weights with the lowest validation loss of the current session.
Both also record `train_scale`, the median over the training images of input_size / long side: the pixel
scale people were learnt at, which prediction's `--scale auto` reproduces (`LoadedModel.train_scale`).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import faults
from ..config import ARCHITECTURE_OPTIONS, TrainConfig, option_name
from ..device import resolve_device
from ..errors import ConfigError
from ..fileio import atomic_write_json
from .checkpoint import load_checkpoint, prepare_model, save_checkpoint
from .coco import CocoKeypoints
from .data import PoseDataset

LOG = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


def _backbone_takes(backbone: str) -> dict[str, inspect.Parameter]:
    from .models import get_backbone_builder

    return dict(inspect.signature(get_backbone_builder(backbone)).parameters)


def run_config(run_dir: str | Path) -> TrainConfig | None:
    """Return the TrainConfig of the run in `run_dir` (from its last.pt), or None when it holds no model yet.

    Raises CheckpointError naming the file when last.pt exists but is unreadable.
    """
    from .checkpoint import checkpoint_train_config

    last = Path(run_dir) / LAST
    if not last.exists():
        return None
    return checkpoint_train_config(load_checkpoint(last), last)


def _effective_architecture(cfg: dict[str, Any]) -> dict[str, Any]:
    """Return the architecture options of a (stored) TrainConfig dict with defaults resolved."""
    from .models.base import Backbone

    out = {k: cfg.get(k) for k in ARCHITECTURE_OPTIONS}
    try:
        takes = _backbone_takes(out["backbone"])
    except ValueError:  # a backbone unknown here: compare as stored
        return out
    if out["width"] is None and "width" in takes:
        out["width"] = takes["width"].default
    if out["stages"] is None:
        out["stages"] = Backbone.default_stages
    return out


def architecture_changes(stored: dict[str, Any], asked: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Return (option, stored value, asked value) for each architecture option in `asked` that differs.

    Options missing from `asked` are not compared; defaults compare by their effective value.
    """
    before = _effective_architecture(stored)
    after = _effective_architecture({**stored, **{k: asked[k] for k in ARCHITECTURE_OPTIONS if k in asked}})
    return [(k, before[k], after[k]) for k in ARCHITECTURE_OPTIONS if before[k] != after[k]]


def check_same_architecture(run_dir: str | Path, stored: dict[str, Any], asked: dict[str, Any]) -> None:
    """Raise ConfigError naming each architecture option of `asked` that differs from the run's `stored` one."""
    changes = architecture_changes(stored, asked)
    if changes:
        was = ", ".join(f"{option_name(k)} {old}" for k, old, _ in changes)
        new = ", ".join(f"{option_name(k)} {value}" for k, _, value in changes)
        raise ConfigError(
            f"{run_dir}: this run was trained with {was}; {new} asks for another architecture, which cannot "
            "change within a run: drop the option to continue the run as it was set up, or start a new run "
            "(another --out, or a new project)"
        )


@dataclass
class EpochRecord:
    session: int
    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    images: int


class TrainCallbacks(Protocol):
    def on_epoch_start(self, session: int, epoch: int, num_batches: int) -> None: ...
    def on_batch_end(self, loss: float) -> None: ...
    def on_epoch_end(self, record: EpochRecord, improved: bool) -> None: ...


class _Silent:
    def on_epoch_start(self, session: int, epoch: int, num_batches: int) -> None:
        pass

    def on_batch_end(self, loss: float) -> None:
        pass

    def on_epoch_end(self, record: EpochRecord, improved: bool) -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    session: int
    epochs_run: int  # epochs of this session completed so far
    best_val_loss: float
    stopped: str  # "early_stopping", "max_epochs", "time_budget", "already_complete"
    history: list[dict[str, Any]]


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    """Return the extra create_model keyword arguments a config asks for."""
    opts: dict[str, Any] = {"channels": cfg.head_channels}
    if cfg.width is not None:
        opts["width"] = cfg.width
    return opts


def pose_loss(outputs: list[tuple[torch.Tensor, torch.Tensor]], heatmaps: torch.Tensor, pafs: torch.Tensor):
    """Return the L2 loss summed over stages (intermediate supervision, as OpenPose) and the last stage's."""
    total = heatmaps.new_zeros(())
    last = total
    for heat, paf in outputs:
        last = torch.mean((heat - heatmaps) ** 2) + torch.mean((paf - pafs) ** 2)
        total = total + last
    return total, last


def data_fingerprint(image_ids: list[int]) -> str:
    """Return a short hash of the labelled set: a changed set starts a new session."""
    return hashlib.sha1(",".join(map(str, sorted(image_ids))).encode()).hexdigest()[:16]


def split_ids(
    image_ids: list[int], val_fraction: float, seed: int, max_val: int
) -> tuple[list[int], list[int]]:
    """Return (train ids, validation ids): a seeded shuffle, so each session's seed gives a fresh split."""
    ids = sorted(image_ids)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_val = 0 if len(ids) < 5 else min(max_val, max(1, round(val_fraction * len(ids))))
    return sorted(ids[n_val:]), sorted(ids[:n_val])


# The fields of numpy's legacy RNG state (`np.random.get_state()`), as `_rng_state` stores them.
_NUMPY_RNG_FIELDS = ("bit_generator", "key", "pos", "has_gauss", "cached_gaussian")


def _rng_state() -> dict[str, Any]:
    """Return the python, numpy, torch (and CUDA) RNG states as tensors and plain Python data.

    Plain, so that a checkpoint loads with `torch.load(weights_only=True)`: numpy's state is stored as a dict
    of a string, a list of ints and numbers (`np.random.get_state()` is a tuple holding a uint32 array).
    """
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    numpy_state = (str(name), key.tolist(), int(pos), int(has_gauss), float(cached_gaussian))
    state = {
        "python": random.getstate(),
        "numpy": dict(zip(_NUMPY_RNG_FIELDS, numpy_state, strict=True)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_rng_tuple(saved: Any) -> tuple:
    """Return the `np.random.set_state` tuple of a stored numpy RNG state: the plain dict `_rng_state` writes,
    or the `np.random.get_state()` tuple (with a uint32 array) that checkpoints written before it hold."""
    if isinstance(saved, dict):
        saved = tuple(saved[k] for k in _NUMPY_RNG_FIELDS)
    name, key, pos, has_gauss, cached_gaussian = saved
    return str(name), np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(cached_gaussian)


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states `_rng_state` returned (or a checkpoint written before it stored plain data)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(_numpy_rng_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU maps its tensors there
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Each worker gets its own numpy/random stream derived from torch's per-worker seed.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(
    dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, epoch: int
) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(
        seed * 100_003 + epoch
    )  # the epoch's order depends only on (seed, epoch): resume replays it
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=g,
        worker_init_fn=_worker_init,
        drop_last=shuffle and len(dataset) > batch_size,
        persistent_workers=False,
        pin_memory=False,
    )


class Trainer:
    """Fits a pose model on a COCO keypoint set in `run_dir`, continuing whatever is there."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: CocoKeypoints,
        run_dir: str | Path,
        callbacks: TrainCallbacks | None = None,
    ):
        self.cfg = cfg
        self.data = data
        self.skeleton = data.skeleton
        self.run_dir = Path(run_dir)
        self.callbacks = callbacks or _Silent()
        self.device = resolve_device(cfg.device)
        self._scale_key: tuple[int, ...] | None = None
        self._scale: float | None = None

    # --- construction -------------------------------------------------------------------------
    def _build(self, state: dict[str, Any] | None):
        from .models import build_model, create_model

        if state is None:
            model = create_model(
                self.cfg.backbone,
                num_keypoints=self.skeleton.num_keypoints,
                num_limbs=self.skeleton.num_limbs,
                stages=self.cfg.stages,
                pretrained=self.cfg.pretrained,
                init=self.cfg.init,
                **model_options(self.cfg),
            )
        else:
            saved = state["skeleton"]["keypoints"]
            if list(saved) != list(self.skeleton.keypoints):
                raise ConfigError(
                    f"{self.run_dir / LAST}: checkpoint skeleton {saved} does not match the data's "
                    f"{list(self.skeleton.keypoints)}"
                )
            model = build_model(state["model_config"])
            model.load_state_dict(state["model_state"])
        model.to(self.device)
        prepare_model(model, self.cfg, self.device)
        opt = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=self.cfg.lr,
            betas=tuple(self.cfg.betas),
            weight_decay=self.cfg.weight_decay,
        )
        return model, opt

    def _datasets(self, model, train_ids: list[int], val_ids: list[int]):
        if self.cfg.frozen_trunk:
            from .trunk import cached_datasets

            return cached_datasets(model, self.data, train_ids, val_ids, self.cfg)
        common = dict(input_size=self.cfg.input_size, targets=self.cfg.targets, grayscale=self.cfg.grayscale)
        train = PoseDataset(self.data, augment=self.cfg.augment, image_ids=train_ids, **common)
        val = PoseDataset(self.data, augment=None, image_ids=val_ids, **common) if val_ids else None
        return train, val

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, new_session: bool = False) -> TrainResult:
        """Train until early stopping / max epochs / time budget; resume or continue what `run_dir` holds."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fingerprint = data_fingerprint(self.data.image_ids)
        last_path = self.run_dir / LAST
        state = load_checkpoint(last_path, map_location=self.device) if last_path.exists() else None
        if state is not None:
            self._check_architecture(state)

        if (
            state is not None
            and state["train"]["complete"]
            and not new_session
            and state["train"]["fingerprint"] == fingerprint
        ):
            t = state["train"]
            return TrainResult(
                self.run_dir, t["session"], t["epoch"], t["best_val"], "already_complete", state["history"]
            )
        if state is None or state["train"]["complete"]:
            # A new session: fresh split, schedule and early-stopping state; weights continue when there are any.
            session = 1 if state is None else state["train"]["session"] + 1
            history = [] if state is None else list(state.get("history", []))
            _seed_everything(self.cfg.seed + session - 1)
            model, opt = self._build(state)
            saved_schedule = None
            t = self._new_session_state(session)
            if state is not None:
                LOG.info("session %d: continuing from %s with %d images", session, last_path, len(self.data))
        else:
            if state["train"]["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"{last_path}: an unfinished session was trained on a different image set; finish it with the "
                    f"same data, or start a new run directory"
                )
            model, opt = self._build(state)
            t = state["train"]
            session, history = t["session"], list(state.get("history", []))
            opt.load_state_dict(state["optimizer"])
            saved_schedule = state["scheduler"]
            _set_rng_state(state["rng"])
            LOG.info("resuming session %d at epoch %d from %s", session, t["epoch"], last_path)
        t["fingerprint"] = fingerprint

        train_set, val_set = self._datasets(model, t["train_ids"], t["val_ids"])
        if len(train_set) == 0:
            raise ConfigError(f"{self.data.path}: no training images")
        sched = make_scheduler(opt, cfg, self._batches_per_epoch(len(train_set)))
        if saved_schedule is not None:
            sched.load_state_dict(saved_schedule)
            # A new scheduler sets its step-0 rate on the optimiser; resume at the saved step's rate instead.
            for group, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
                group["lr"] = lr
        start = time.monotonic()
        stopped = "max_epochs"
        if cfg.max_epochs == 0 and t["epoch"] == 0:  # `--epochs 0`: store the initialised (untrained) model
            t["complete"] = True
            self._save(model, opt, sched, t, history, best=True)
        while t["epoch"] < cfg.max_epochs:
            epoch = t["epoch"] + 1
            t0 = time.monotonic()
            train_loss, n_images = self._train_epoch(model, opt, sched, train_set, session, epoch)
            val_loss = self._validate(model, val_set) if val_set is not None else train_loss
            if not getattr(sched, "per_batch", False):
                sched.step()
            improved = val_loss < t["best_val"] - cfg.min_delta
            if improved:
                t["best_val"], t["bad_epochs"] = val_loss, 0
            else:
                t["bad_epochs"] += 1
            t["epoch"] = epoch
            rec = EpochRecord(
                session,
                epoch,
                train_loss,
                val_loss,
                opt.param_groups[0]["lr"],
                time.monotonic() - t0,
                n_images,
            )
            history.append(asdict(rec))
            if t["bad_epochs"] >= cfg.patience:
                stopped = "early_stopping"
            budget_hit = cfg.max_minutes is not None and (time.monotonic() - start) / 60 >= cfg.max_minutes
            t["complete"] = (
                stopped == "early_stopping"
                or epoch >= cfg.max_epochs
                or (budget_hit and cfg.budget_ends_session)
            )
            self._save(model, opt, sched, t, history, best=improved)
            self.callbacks.on_epoch_end(rec, improved)
            if budget_hit and stopped != "early_stopping" and epoch < cfg.max_epochs:
                stopped = "time_budget"
            if t["complete"] or budget_hit:
                break
        return TrainResult(self.run_dir, session, t["epoch"], t["best_val"], stopped, history)

    def _check_architecture(self, state: dict[str, Any]) -> None:
        """Raise ConfigError when `cfg` asks for another architecture than the run's model has."""
        stored = state.get("train_config")
        if isinstance(stored, dict):
            check_same_architecture(self.run_dir, stored, self.cfg.to_dict())

    def _save(self, model, opt, sched, t: dict[str, Any], history: list[dict[str, Any]], best: bool) -> None:
        state = {
            "model_config": model.config,
            "model_state": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "train": t,
            "history": history,
            "rng": _rng_state(),
            "skeleton": self.skeleton.to_dict(),
            "train_config": self.cfg.to_dict(),
            "train_scale": self._train_scale(t["train_ids"]),
        }
        if best:  # best first: a crash between the two writes never leaves best older than last claims
            save_checkpoint(self.run_dir / BEST, {**state, "optimizer": None, "scheduler": None})
        save_checkpoint(self.run_dir / LAST, state)
        atomic_write_json(self.run_dir / "history.json", history, indent=1)

    def _train_scale(self, train_ids: list[int]) -> float | None:
        """Return the median over the training images of input_size / long side (their pixel scale in training)."""
        from .predict import median_train_scale

        key = tuple(train_ids)
        if self._scale_key != key:
            frames = (self.data.frame(i) for i in train_ids)
            self._scale_key = key
            self._scale = median_train_scale(((f.width, f.height) for f in frames), self.cfg.input_size)
        return self._scale

    def _new_session_state(self, session: int) -> dict[str, Any]:
        train_ids, val_ids = split_ids(
            self.data.image_ids, self.cfg.val_fraction, self.cfg.seed + session, self.cfg.max_val_images
        )
        return {
            "session": session,
            "epoch": 0,
            "best_val": math.inf,
            "bad_epochs": 0,
            "complete": False,
            "train_ids": train_ids,
            "val_ids": val_ids,
        }

    def _batches_per_epoch(self, n_images: int) -> int:
        """Return the batches an epoch of `n_images` runs (as `make_loader` and `steps_per_epoch` make them)."""
        bs = self.cfg.batch_size
        n = n_images // bs if n_images > bs else 1  # drop_last when there is more than one batch
        return n if self.cfg.steps_per_epoch is None else min(n, self.cfg.steps_per_epoch)

    def _train_epoch(self, model, opt, sched, dataset, session: int, epoch: int) -> tuple[float, int]:
        cfg = self.cfg
        model.train()
        loader = make_loader(dataset, cfg.batch_size, True, cfg.num_workers, cfg.seed + 1000 * session, epoch)
        n_batches = len(loader) if cfg.steps_per_epoch is None else min(len(loader), cfg.steps_per_epoch)
        self.callbacks.on_epoch_start(session, epoch, n_batches)
        total, seen = 0.0, 0
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            outputs, n = _forward(model, batch, self.device)
            loss, _ = pose_loss(outputs, batch["heatmaps"].to(self.device), batch["pafs"].to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if getattr(sched, "per_batch", False):
                sched.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss became {value} at session {session} epoch {epoch} batch {i}; lower --lr"
                )
            total += value * n
            seen += n
            self.callbacks.on_batch_end(value)
            faults.point("train")
        return total / max(seen, 1), seen

    @torch.inference_mode()
    def _validate(self, model, dataset) -> float:
        model.eval()
        loader = make_loader(dataset, max(self.cfg.batch_size, 8), False, self.cfg.num_workers, 0, 0)
        total, seen = 0.0, 0
        for batch in loader:
            outputs, n = _forward(model, batch, self.device)
            _, last = pose_loss(outputs, batch["heatmaps"].to(self.device), batch["pafs"].to(self.device))
            total += float(last) * n
            seen += n
        return total / max(seen, 1)


class OneCycle:
    """Learning-rate factor at step s of `total`: linear warm-up 1/25 -> 1 over `warmup` x total, then a cosine to 0."""

    def __init__(self, total: int, warmup: float = 0.15, start: float = 1 / 25) -> None:
        self.total, self.warmup, self.start = max(1, int(total)), warmup, start

    def __call__(self, step: int) -> float:
        w = max(1, round(self.warmup * self.total))
        if step < w:
            return self.start + (1 - self.start) * step / w
        done = min(1.0, (step - w) / max(1, self.total - w))
        return 0.5 * (1 + math.cos(math.pi * done))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int):
    """Return the learning-rate schedule of `cfg` (see `TrainConfig.lr_schedule`); `.per_batch` says when it steps."""
    if cfg.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, OneCycle(max(1, cfg.max_epochs) * batches_per_epoch))
        sched.per_batch = True
        return sched
    return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.lr_step_epochs), gamma=cfg.lr_gamma)


def _forward(model, batch: dict[str, Any], device: torch.device):
    """Return (stage outputs, batch size) of `model` on a batch of images or of cached trunk features."""
    if "features" in batch:  # activepose.pose.trunk.CachedFeatureDataset
        x = batch["features"].to(device, non_blocking=True).float()
        return model.forward_features(x), len(x)
    x = batch["image"].to(device, non_blocking=True)
    return model(x), len(x)


def train(
    cfg: TrainConfig,
    data: CocoKeypoints,
    run_dir: str | Path,
    callbacks: TrainCallbacks | None = None,
    new_session: bool = False,
) -> TrainResult:
    """Return the result of fitting (or resuming / continuing) a model on `data` in `run_dir`."""
    return Trainer(cfg, data, run_dir, callbacks).fit(new_session=new_session)


# --- learning-rate finder -------------------------------------------------------------------------
@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # exponentially smoothed
    suggested_lr: float
    min_loss_lr: float


def lr_find(
    cfg: TrainConfig,
    data: CocoKeypoints,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> LRFindResult:
    """Return the LR range test (Smith 2017) on a fresh model: loss vs exponentially growing learning rate.

    The suggestion is the learning rate at the steepest descent of the smoothed loss, the usual reading of
    the curve; `min_loss_lr / 10` is reported alongside as the other common rule.
    """
    from .models import create_model

    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model = create_model(
        cfg.backbone, num_keypoints=data.skeleton.num_keypoints, num_limbs=data.skeleton.num_limbs,
        stages=cfg.stages, pretrained=cfg.pretrained, init=cfg.init, **model_options(cfg),
    ).to(device).train()  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=start_lr, betas=tuple(cfg.betas))
    dataset = PoseDataset(
        data, input_size=cfg.input_size, targets=cfg.targets, augment=cfg.augment, grayscale=cfg.grayscale
    )
    gamma = (end_lr / start_lr) ** (1 / max(num_steps - 1, 1))
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    step = 0
    while step < num_steps:
        for batch in make_loader(dataset, cfg.batch_size, True, cfg.num_workers, cfg.seed, step):
            lr = start_lr * gamma**step
            for g in opt.param_groups:
                g["lr"] = lr
            loss, _ = pose_loss(
                model(batch["image"].to(device)), batch["heatmaps"].to(device), batch["pafs"].to(device)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            if on_step:
                on_step(step, lr, smoothed)
            step += 1
            best = min(best, smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge_factor * best or step >= num_steps:
                step = num_steps
                break
    return LRFindResult(lrs, losses, *suggest_lr(lrs, losses))


def suggest_lr(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """Return (steepest-descent lr, min-loss lr / 10) from an LR range test curve."""
    x = np.log10(np.asarray(lrs))
    y = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(y) < 3:
        return float(10 ** x[0]) if len(x) else math.nan, math.nan
    stop = int(np.argmin(y)) + 1  # the curve past its minimum is divergence, not descent
    grad = np.gradient(y[: max(stop, 3)], x[: max(stop, 3)])
    steep = float(10 ** x[int(np.argmin(grad))])
    return steep, float(10 ** x[int(np.argmin(y))]) / 10
