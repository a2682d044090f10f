"""Training: fit with early stopping, atomic checkpoints, resume, and sessions that continue a model.

A *session* is one training run on one labelled set, with its own fresh train/validation split, its
own learning-rate schedule and early-stopping state (the paper's "training session"). The
active-learning loop starts a new session from the previous session's weights each round.

`run_dir/last.pt` is written atomically after every epoch and holds everything needed to continue
(model, optimiser, scheduler, epoch, early-stopping state, RNG states, history), so a run killed at
any moment resumes with the same command and loses at most the epoch in progress.
`run_dir/best.pt` holds the weights with the best validation score (`TrainConfig.val_metric`: the loss, or PCK
of the decoded validation people) so far: from session 2 on it starts as the previous session's model, scored on
the new session's validation split, and is replaced only by an epoch that beats it, so a round never hands on a
worse model than the last one without saying so (`TrainResult.kept`, `sessions.json`).

A session ends when validation stops improving (`lr_schedule="plateau"`: the rate drops at each plateau and the
session ends converged at the last; or `patience` epochs without a better score), at its epoch cap (`max_epochs`,
or `steps_per_image` x the labelled images, so the cap grows with the labels), or at a time budget. It starts
from the last session's model (`restart="warm"`) or from the run's first weights (`"initial"`,
`run_dir/initial.pt`). `run_dir/sessions.json` records each completed session: images, epochs, batches, why
it stopped and which model it kept (`read_sessions`).
Both also record `train_scale`, the median over the training images of input_size / long side: the pixel
scale people were learnt at, which prediction's `--scale auto` reproduces (`LoadedModel.train_scale`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
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

LAST, BEST, INITIAL, SESSIONS = "last.pt", "best.pt", "initial.pt", "sessions.json"


def read_sessions(run_dir: str | Path) -> list[dict[str, Any]]:
    """Return the completed sessions' summaries of a run (`sessions.json`; [] when absent or unreadable):
    per session its images, epochs, steps, epoch cap, why it stopped ("converged", "early_stopping",
    "max_epochs", "time_budget"), which model it kept ("new", or "previous" when no epoch beat the model it
    started from) and the validation scores."""
    path = Path(run_dir) / SESSIONS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []


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
    val_pck: float | None = None  # with val_metric "pck"
    steps: int = 0  # batches of this session so far


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
    best_val_loss: float  # the best validation score: the loss, or 1 - PCK with val_metric "pck"
    # "converged" (the plateau schedule's last plateau), "early_stopping", "max_epochs" (the step cap),
    # "time_budget", "already_complete"
    stopped: str
    history: list[dict[str, Any]]
    steps: int = 0  # batches this session trained
    max_epochs: int = 0  # the session's epoch cap (see TrainConfig.steps_per_image)
    # "new": best.pt is this session's best; "previous": no epoch beat the model the session started from
    # (scored on the same validation split first, when it holds `keep_min_val` images), so best.pt is still that
    # model.
    kept: str = "new"
    start_val: float | None = None  # the starting model's validation score (None in session 1)


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


def _unit_hash(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by (seed, name): the same on every machine and in every session."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_ids(
    image_ids: list[int],
    val_fraction: float,
    seed: int,
    max_val: int,
    groups: dict[int, str] | None = None,
) -> tuple[list[int], list[int]]:
    """Return (train ids, validation ids), held out by group and stable as the labelled set grows.

    A group is an image's video (`groups`; frames of one video are near-copies of each other, so a validation
    frame whose neighbours were trained on would score as if seen) or, without one, the image itself. Groups are
    held out in the order of a seeded hash while it is below `val_fraction` (at least one group), skipping a group
    that would take the split past 2 x `val_fraction` of the images or `max_val`. As the set grows, held-out
    images stay held out (the cap may give one back to training), so a session's validation images were not
    trained on by the model it starts from — the model it must beat to replace it — except a group the cap kept
    in training while the set was small. Fewer than 5 images: no validation split. One group only (every image
    one video): held out by image."""
    ids = sorted(image_ids)
    n = len(ids)
    if n < 5 or val_fraction <= 0 or max_val <= 0:
        return ids, []
    cap = min(max_val, max(1, round(2 * val_fraction * n)))
    named = {i: (f"video:{groups[i]}" if groups and groups.get(i) is not None else f"image:{i}") for i in ids}
    if len(set(named.values())) == 1:
        named = {i: f"image:{i}" for i in ids}
    members: dict[str, list[int]] = {}
    for i in ids:
        members.setdefault(named[i], []).append(i)
    rank = {g: _unit_hash(seed, g) for g in members}
    val: list[int] = []
    for g in sorted(members, key=lambda g: (rank[g], g)):
        if val and rank[g] >= val_fraction:
            break
        if len(val) + len(members[g]) <= cap:
            val.extend(members[g])
    held = set(val)
    return [i for i in ids if i not in held], sorted(val)


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
    def _build(self, state: dict[str, Any] | None, weights: dict[str, Any] | None = None):
        """Return (model, optimiser): a new model (state None), or the checkpoint `state`'s architecture with
        its weights (or `weights`: a state dict of the same architecture, for `restart="initial"`)."""
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
            model.load_state_dict(state["model_state"] if weights is None else weights)
        model.to(self.device)
        prepare_model(model, self.cfg, self.device)
        # ImageNet-pretrained weights that train (the trunk, or its last blocks with --train-blocks) learn at
        # trunk_lr_scale x the rate of the new layers (neck and stages), which start from random.
        # One group when they share the rate (as runs made before the option: their optimiser states load).
        trunk = {
            id(p)
            for p in model.backbone.body.parameters()
            if p.requires_grad and self.cfg.trunk_lr_scale != 1
        }
        groups = [
            {
                "params": [p for p in model.parameters() if p.requires_grad and id(p) not in trunk],
                "lr": self.cfg.lr,
            },
            {
                "params": [p for p in model.parameters() if id(p) in trunk],
                "lr": self.cfg.lr * self.cfg.trunk_lr_scale,
            },
        ]
        opt = torch.optim.Adam(
            [g for g in groups if g["params"]],
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
    def fit(self, new_session: bool = False, cap_images: int | None = None) -> TrainResult:
        """Train until convergence / early stopping / the step cap / the time budget; resume or continue what
        `run_dir` holds.

        `cap_images`: size the session's step cap (`TrainConfig.steps_per_image`) for this many images instead of
        the labelled set's (a compute control trains its fixed set with the schedule grown sets get).
        """
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
            return self._result(state["train"], state["history"], "already_complete")
        if state is None or state["train"]["complete"]:
            # A new session: fresh split, schedule and early-stopping state; weights continue when there are any.
            session = 1 if state is None else state["train"]["session"] + 1
            history = [] if state is None else list(state.get("history", []))
            _seed_everything(self.cfg.seed + session - 1)
            previous = self._previous_best(state) if state is not None else None
            weights = None
            if (
                previous is not None
            ):  # warm: the last session's model (its best.pt); or the run's first weights
                weights = self._initial_weights() if cfg.restart == "initial" else previous["model_state"]
            model, opt = self._build(state, weights)
            if state is None:
                self._save_initial(model)
            saved_schedule = None
            t = self._new_session_state(session, cap_images)
            if state is not None:
                LOG.info("session %d: continuing from %s with %d images", session, last_path, len(self.data))
        else:
            if state["train"]["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"{last_path}: an unfinished session was trained on a different image set; finish it with the "
                    f"same data, or start a new run directory"
                )
            model, opt = self._build(state)
            previous = None
            t = state["train"]
            session, history = t["session"], list(state.get("history", []))
            opt.load_state_dict(state["optimizer"])
            saved_schedule = state["scheduler"]
            _set_rng_state(state["rng"])
            LOG.info("resuming session %d at epoch %d from %s", session, t["epoch"], last_path)
        t["fingerprint"] = fingerprint
        max_epochs = t.setdefault("max_epochs", cfg.max_epochs)  # sessions written before the cap: max_epochs

        train_set, val_set = self._datasets(model, t["train_ids"], t["val_ids"])
        if len(train_set) == 0:
            raise ConfigError(f"{self.data.path}: no training images")
        # sessions written before the plan: an epoch is one pass (or steps_per_epoch batches) of the split
        t.setdefault("epoch_batches", self._batches_per_epoch(len(train_set)))
        sched = make_scheduler(opt, cfg, t["epoch_batches"], max_epochs)
        if saved_schedule is not None:
            sched.load_state_dict(saved_schedule)
            # A new scheduler sets its step-0 rate on the optimiser; resume at the saved step's rate instead.
            for group, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
                group["lr"] = lr
        if previous is not None and val_set is not None:
            # The last session's model is the one to beat (whether this session starts from it or not): scored on
            # this session's validation split, it stays best.pt until an epoch scores better — when the split is
            # large enough to tell two models apart (`keep_min_val`); else its score is only recorded.
            t["start_val"] = self._score(*self._validate(self._model_of(state, previous), val_set))
            if len(t["val_ids"]) >= cfg.keep_min_val:
                t["best_val"], t["kept"] = t["start_val"], "previous"
                save_checkpoint(
                    self.run_dir / BEST, {**previous, "train": dict(t), "optimizer": None, "scheduler": None}
                )
        start = time.monotonic()
        stopped = "max_epochs"
        if max_epochs == 0 and t["epoch"] == 0:  # `--epochs 0`: store the initialised (untrained) model
            t["complete"] = True
            self._save(model, opt, sched, t, history, best=True)
        while t["epoch"] < max_epochs:
            epoch = t["epoch"] + 1
            t0 = time.monotonic()
            train_loss, n_images, n_steps = self._train_epoch(
                model, opt, sched, train_set, session, epoch, t["epoch_batches"]
            )
            t["steps"] = t.get("steps", 0) + n_steps
            val_loss, val_pck = self._validate(model, val_set) if val_set is not None else (train_loss, None)
            score = self._score(val_loss, val_pck)
            if not getattr(sched, "per_batch", False):
                sched.step()
            improved = score < t["best_val"] - cfg.min_delta
            if improved:
                t["best_val"], t["bad_epochs"], t["kept"] = score, 0, "new"
            elif (
                epoch >= cfg.min_epochs and t["steps"] - n_steps >= cfg.warmup_steps
            ):  # epochs after the warm-up
                t["bad_epochs"] += 1
            t["epoch"] = epoch
            rec = EpochRecord(
                session, epoch, train_loss, val_loss, opt.param_groups[0]["lr"], time.monotonic() - t0,
                n_images, val_pck, t["steps"],
            )  # fmt: skip
            history.append(asdict(rec))
            if isinstance(sched, PlateauSchedule) and t["bad_epochs"] >= cfg.lr_patience:
                if t.get("drops", 0) < cfg.lr_drops:
                    sched.drop()
                    t["drops"], t["bad_epochs"] = t.get("drops", 0) + 1, 0
                else:
                    stopped = "converged"
            if t["bad_epochs"] >= cfg.patience:
                stopped = "early_stopping"
            budget_hit = cfg.max_minutes is not None and (time.monotonic() - start) / 60 >= cfg.max_minutes
            t["complete"] = (
                stopped in ("early_stopping", "converged")
                or epoch >= max_epochs
                or (budget_hit and cfg.budget_ends_session)
            )
            if t["complete"]:
                t["stopped"] = stopped if stopped != "max_epochs" or epoch >= max_epochs else "time_budget"
            self._save(model, opt, sched, t, history, best=improved)
            self.callbacks.on_epoch_end(rec, improved)
            if budget_hit and stopped not in ("early_stopping", "converged") and epoch < max_epochs:
                stopped = "time_budget"
            if t["complete"] or budget_hit:
                break
        return self._result(t, history, stopped)

    def _result(self, t: dict[str, Any], history: list[dict[str, Any]], stopped: str) -> TrainResult:
        return TrainResult(
            self.run_dir, t["session"], t["epoch"], t["best_val"], stopped, history, steps=t.get("steps", 0),
            max_epochs=t.get("max_epochs", self.cfg.max_epochs), kept=t.get("kept", "new"),
            start_val=t.get("start_val"),
        )  # fmt: skip

    def _score(self, val_loss: float, val_pck: float | None) -> float:
        """Return the validation score early stopping and best.pt follow (lower is better)."""
        if self.cfg.val_metric == "pck":
            # Ties (e.g. PCK 0 while a cold start still finds nobody) go to the lower loss: 1e-3 x a loss of
            # ~1e-2 is far below one keypoint of 100 validation images (~1e-3 PCK).
            return (
                1.0 - (val_pck if val_pck is not None and math.isfinite(val_pck) else 0.0) + 1e-3 * val_loss
            )
        return val_loss

    def _save_initial(self, model) -> None:
        """Keep the weights session 1 starts from (`restart="initial"` sessions start from them again)."""
        save_checkpoint(
            self.run_dir / INITIAL, {"model_config": model.config, "model_state": model.state_dict()}
        )

    def _initial_weights(self) -> dict[str, Any]:
        path = self.run_dir / INITIAL
        if not path.exists():
            raise ConfigError(
                f"{path}: missing, so --restart initial has no initial weights to start from (this run began "
                "before they were kept): use --restart warm, or start a new run"
            )
        return load_checkpoint(path, map_location=self.device)["model_state"]

    def _previous_best(self, state: dict[str, Any]) -> dict[str, Any]:
        """Return the checkpoint of the completed session's model: its best.pt (last.pt's `state` without one)."""
        best = self.run_dir / BEST
        return load_checkpoint(best, map_location=self.device) if best.exists() else state

    def _model_of(self, state: dict[str, Any], checkpoint: dict[str, Any]):
        """Return the model of `checkpoint`'s weights (the run's architecture), ready to validate."""
        model, _ = self._build(state, checkpoint["model_state"])
        return model

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
        if t["complete"]:
            self._record_session(t, history)

    def _record_session(self, t: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Add (or replace) the completed session's line in `run_dir/sessions.json` (see `session_summary`)."""
        path = self.run_dir / SESSIONS
        sessions = [s for s in read_sessions(self.run_dir) if s.get("session") != t["session"]]
        sessions.append({
            "session": t["session"], "images": len(self.data.image_ids), "epochs": t["epoch"],
            "steps": t.get("steps", 0), "max_epochs": t.get("max_epochs"), "stopped": t.get("stopped", "max_epochs"),
            "kept": t.get("kept", "new"), "start_val": t.get("start_val"), "best_val": t["best_val"],
            "seconds": round(sum(h.get("seconds", 0.0) for h in history if h.get("session") == t["session"]), 3),
            "val_metric": self.cfg.val_metric, "restart": self.cfg.restart,
        })  # fmt: skip
        atomic_write_json(path, sorted(sessions, key=lambda s: s["session"]), indent=1)

    def _train_scale(self, train_ids: list[int]) -> float | None:
        """Return the median over the training images of input_size / long side (their pixel scale in training)."""
        from .predict import median_train_scale

        key = tuple(train_ids)
        if self._scale_key != key:
            frames = (self.data.frame(i) for i in train_ids)
            self._scale_key = key
            self._scale = median_train_scale(((f.width, f.height) for f in frames), self.cfg.input_size)
        return self._scale

    def _new_session_state(self, session: int, cap_images: int | None = None) -> dict[str, Any]:
        videos = {f.image_id: f.video for f in self.data.frames if f.video is not None}
        train_ids, val_ids = split_ids(
            self.data.image_ids, self.cfg.val_fraction, self.cfg.seed, self.cfg.max_val_images, videos
        )
        return {
            "session": session,
            "epoch": 0,
            "best_val": math.inf,
            "bad_epochs": 0,
            "complete": False,
            "train_ids": train_ids,
            "val_ids": val_ids,
            "steps": 0,
            "drops": 0,
            "kept": "new",
            **self.session_plan(len(self.data.image_ids) if cap_images is None else cap_images),
        }

    def session_plan(self, n_images: int) -> dict[str, int]:
        """Return {"epoch_batches", "max_epochs"} of a session on `n_images` labelled images: the batches of an
        epoch of its training split, and the epoch cap (`TrainConfig.steps_per_image`, else `max_epochs`).

        A session sized for more images than it has (`fit(cap_images=...)`) cycles through its own for as many
        batches per epoch, so its schedule is step for step the one of a set of `n_images`."""
        cfg = self.cfg
        n_train = len(split_ids(list(range(n_images)), cfg.val_fraction, 0, cfg.max_val_images)[0])
        batches = self._batches_per_epoch(max(n_train, 1))
        epochs = cfg.max_epochs
        if cfg.steps_per_image is not None and cfg.max_epochs > 0:
            epochs = min(
                cfg.max_epochs, max(cfg.min_epochs, math.ceil(cfg.steps_per_image * n_images / batches))
            )
        return {"epoch_batches": batches, "max_epochs": int(epochs)}

    def _batches_per_epoch(self, n_images: int) -> int:
        """Return the batches an epoch of `n_images` runs (as `make_loader` and `steps_per_epoch` make them)."""
        bs = self.cfg.batch_size
        n = n_images // bs if n_images > bs else 1  # drop_last when there is more than one batch
        # With steps_per_epoch an epoch is that many batches: a set with fewer cycles through itself again.
        return n if self.cfg.steps_per_epoch is None else self.cfg.steps_per_epoch

    def _train_epoch(
        self, model, opt, sched, dataset, session: int, epoch: int, n_batches: int
    ) -> tuple[float, int, int]:
        """Train `n_batches` batches; return (mean loss, images seen, batches)."""
        model.train()
        self.callbacks.on_epoch_start(session, epoch, n_batches)
        total, seen, steps = 0.0, 0, 0
        for i, batch in enumerate(self._batches(dataset, session, epoch, n_batches)):
            steps += 1
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
        return total / max(seen, 1), seen, steps

    def _batches(self, dataset, session: int, epoch: int, n_batches: int):
        """Yield an epoch's `n_batches` batches: passes over `dataset`, each in an order set by (seed, epoch, pass)."""
        cfg, done, passes = self.cfg, 0, 0
        while done < n_batches:
            seed = cfg.seed + 1000 * session + 7919 * passes  # pass 0: the order epochs always had
            for batch in make_loader(dataset, cfg.batch_size, True, cfg.num_workers, seed, epoch):
                if done >= n_batches:
                    return
                done += 1
                yield batch
            passes += 1

    @torch.inference_mode()
    def _validate(self, model, dataset) -> tuple[float, float | None]:
        """Return (the last stage's mean loss, PCK@0.2 of the decoded people or None) on the validation set."""
        model.eval()
        loader = make_loader(dataset, max(self.cfg.batch_size, 8), False, self.cfg.num_workers, 0, 0)
        decoder = None
        if self.cfg.val_metric == "pck":
            from .decode import Decoder

            decoder = Decoder(self.skeleton, stride=self.cfg.targets.stride)
        total, seen, predictions = 0.0, 0, {}
        for batch in loader:
            outputs, n = _forward(model, batch, self.device)
            _, last = pose_loss(outputs, batch["heatmaps"].to(self.device), batch["pafs"].to(self.device))
            total += float(last) * n
            seen += n
            if decoder is not None:
                people = decoder(*outputs[-1])
                for image_id, (keypoints, scores) in zip(batch["image_id"].tolist(), people, strict=True):
                    predictions[int(image_id)] = (self._to_image(int(image_id), keypoints), scores)
        val_pck = None
        if decoder is not None:
            from .evaluate import pck

            val_pck = pck(self.data.subset(sorted(predictions)), predictions)
        return total / max(seen, 1), val_pck

    def _to_image(self, image_id: int, keypoints: np.ndarray) -> np.ndarray:
        """Return decoded keypoints (network-input pixels of the letterboxed input) in image pixels."""
        f = self.data.frame(image_id)
        out = keypoints.astype(np.float64).copy()
        out[..., :2] *= max(f.width, f.height) / self.cfg.input_size
        return out


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


class PlateauSchedule:
    """Per batch: a linear warm-up from lr/25 over `warmup` steps, then the base rate, multiplied by `gamma` at
    each `drop()` (the Trainer drops it when validation plateaus, and stops at the last plateau)."""

    per_batch = True

    def __init__(self, opt: torch.optim.Optimizer, warmup: int, gamma: float) -> None:
        self.opt, self.warmup, self.gamma = opt, int(warmup), float(gamma)
        self.base = [g["lr"] for g in opt.param_groups]
        self.steps, self.scale = 0, 1.0
        self._apply()

    def factor(self) -> float:
        if self.steps >= self.warmup:
            return self.scale
        return self.scale * (1 / 25 + (1 - 1 / 25) * self.steps / self.warmup)

    def _apply(self) -> None:
        for group, base in zip(self.opt.param_groups, self.base, strict=True):
            group["lr"] = base * self.factor()

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def drop(self) -> None:
        self.scale *= self.gamma
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [base * self.factor() for base in self.base]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "scale": self.scale, "base": list(self.base)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.scale, self.base = int(state["steps"]), float(state["scale"]), list(state["base"])
        self._apply()


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int, max_epochs: int | None = None
):
    """Return the learning-rate schedule of `cfg` (see `TrainConfig.lr_schedule`); `.per_batch` says when it steps.

    `max_epochs`: the session's epoch cap (default `cfg.max_epochs`), the length of a onecycle schedule.
    """
    epochs = cfg.max_epochs if max_epochs is None else max_epochs
    if cfg.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, OneCycle(max(1, epochs) * batches_per_epoch))
        sched.per_batch = True
        return sched
    if cfg.lr_schedule == "plateau":
        return PlateauSchedule(opt, cfg.warmup_steps, cfg.lr_gamma)
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
    cap_images: int | None = None,
) -> TrainResult:
    """Return the result of fitting (or resuming / continuing) a model on `data` in `run_dir`."""
    return Trainer(cfg, data, run_dir, callbacks).fit(new_session=new_session, cap_images=cap_images)


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
