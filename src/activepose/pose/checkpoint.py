"""Checkpoints: written atomically, self-describing (model config + skeleton), loadable without the data."""

from __future__ import annotations

import io
import logging
import math
import pickle
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import INPUT_SIZE, TrainConfig
from ..device import resolve_device
from ..errors import ActiveposeError, ConfigError
from ..fileio import atomic_write, file_sha1
from .skeleton import Skeleton

LOG = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
# Network input side used when a checkpoint does not record its training input size.
DEFAULT_INPUT_SIZE = INPUT_SIZE


class CheckpointError(ActiveposeError, RuntimeError):
    """A checkpoint file is missing, unreadable or not an activepose checkpoint."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (plus a format version) to `path` atomically: a crash never leaves a torn file."""
    state = {"format": "activepose", "version": CHECKPOINT_VERSION, **state}
    # Serialised in memory first: torch's zip writer turns a failing file write (disk full) into a RuntimeError
    # of its own; a plain write of the bytes raises the OSError itself (ENOSPC: a clear error, not a bug).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(buffer)
    if unsafe:  # a bug: load_checkpoint (weights_only=True) would refuse the file
        raise TypeError(
            f"{path}: checkpoint state holds {', '.join(sorted(unsafe))}: only tensors and plain Python data "
            "may be saved"
        )
    return atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


def _legacy_rng_globals() -> list[Any]:
    """Return the numpy globals that a legacy numpy RNG state needs, and no others (for `safe_globals`).

    Checkpoints written before the RNG state was stored as plain data hold `np.random.get_state()`: a tuple
    with a uint32 array, which pickles as `_reconstruct(ndarray, ...)` of a `dtype('uint32')`. Allowing these
    lets only uint32 ndarrays be rebuilt (building any other dtype's instance is refused: its class is not
    listed); `_reconstruct` is listed under numpy 2's and numpy 1's module name, so files written with
    either load.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


_LOAD_LOCK = threading.Lock()
# Lines of torch's weights-only failure message that are advice, not the problem.
_ADVICE = re.compile(r"(Weights only load failed|Please file an issue|Check the documentation|\(\d\) )")


def _unpickler_problem(exc: Exception) -> tuple[str, bool]:
    """Return (what a weights-only load failure says went wrong, on one line; whether it is a refusal).

    A refusal is a file that needs a global (a class or function) that is not allowed, as a crafted file
    does; anything else is a corrupt or truncated file. torch wraps both in paragraphs of advice.
    """
    lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not _ADVICE.match(line)]
    problem = lines[0].split(". Please use")[0].rstrip(".") if lines else type(exc).__name__
    found = re.search(r"GLOBAL (\S+)|unrecognized function (.+)|allowlisted via .*?got (.+)", problem)
    if found:
        return next(g for g in found.groups() if g), True
    return problem, False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Return the state stored at `path`; raise CheckpointError naming the file when it cannot be used.

    Loaded with `weights_only=True`: only tensors and plain Python data (dicts, lists, tuples, numbers,
    strings) are rebuilt, so opening a crafted file never runs code; anything else is refused with a
    CheckpointError. The one exception is scoped to this call: the numpy uint32 array of a legacy RNG state
    (`_legacy_rng_globals`), which checkpoints written by earlier versions hold.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # safe_globals adds to, then removes from, torch's process-wide allowlist: one load at a time, and
        # only what is not listed already (leaving the caller's own entries in place).
        with _LOAD_LOCK:
            listed = torch.serialization.get_safe_globals()
            extra = [g for g in _legacy_rng_globals() if g not in listed]
            with torch.serialization.safe_globals(extra):
                state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        problem, refused = _unpickler_problem(exc)
        if refused:
            raise CheckpointError(
                f"{path}: refused: loading it needs {problem}, which is not allowed: a checkpoint may hold only "
                "tensors and plain data (anything else could run code); activepose never writes such a file, so "
                "it is not one of its checkpoints or was altered: delete it and train again (activepose train)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({problem})") from None
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != "activepose":
        raise CheckpointError(f"{path}: not an activepose checkpoint")
    return state


@dataclass(frozen=True)
class LoadedModel:
    """A pose model rebuilt from a checkpoint, with what callers need to use it.

    - `net`: the model in eval mode on the requested device.
    - `skeleton`: the keypoints and limbs it predicts.
    - `input_size`: the network input side it was trained at (`DEFAULT_INPUT_SIZE` if not recorded).
    - `train_config`: the `TrainConfig` it was trained with (None when the checkpoint has none usable).
    - `path`: the checkpoint file; `sha1`: its content hash (computed on first use).
    - `session`, `epoch`, `complete`: training progress stored with it (session 0 when not recorded).
    - `train_scale`: the pixel scale it was trained at, the median over its training images of
      input_size / long side (how much an image was shrunk to enter the network); None for checkpoints
      written before it was recorded. Prediction's `--scale auto` resizes images by it.
    """

    net: nn.Module
    skeleton: Skeleton
    input_size: int
    train_config: TrainConfig | None
    path: Path
    session: int = 0
    epoch: int = 0
    complete: bool = False
    train_scale: float | None = None

    @cached_property
    def sha1(self) -> str:
        return file_sha1(self.path)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def checkpoint_train_config(state: dict[str, Any], path: str | Path | None = None) -> TrainConfig | None:
    """Return the TrainConfig stored in a checkpoint state (None when absent or no longer valid)."""
    raw = state.get("train_config")
    if not isinstance(raw, dict):
        return None
    try:
        return TrainConfig.from_dict(raw)
    except (ConfigError, TypeError, ValueError) as exc:
        LOG.warning("%s: stored training config not usable (%s)", path or "checkpoint", exc)
        return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Return the model stored in a checkpoint file (best.pt / last.pt / a project's model_N.pt).

    `device`: a torch device or a `--device` string (auto, cpu, cuda, cuda:N, mps), checked by
    `resolve_device`. Raises CheckpointError naming the file when it is not a usable checkpoint.
    """
    from .models import build_model

    path = Path(path)
    dev = resolve_device(device)
    state = load_checkpoint(path, map_location=dev)
    try:
        model = build_model(state["model_config"])
        model.load_state_dict(state["model_state"])
        skeleton = Skeleton.from_dict(state["skeleton"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not hold a usable pose model ({exc})") from exc
    model.to(dev).eval()
    cfg = checkpoint_train_config(state, path)
    if cfg is not None:
        prepare_model(model, cfg, dev)
    progress = state.get("train") if isinstance(state.get("train"), dict) else {}
    return LoadedModel(
        net=model,
        skeleton=skeleton,
        input_size=int(cfg.input_size) if cfg is not None else DEFAULT_INPUT_SIZE,
        train_config=cfg,
        path=path,
        session=int(progress.get("session", 0)),
        epoch=int(progress.get("epoch", 0)),
        complete=bool(progress.get("complete", False)),
        train_scale=checkpoint_train_scale(state),
    )


def checkpoint_train_scale(state: dict[str, Any]) -> float | None:
    """Return the training pixel scale a checkpoint records (`state["train_scale"]`), None when absent/invalid."""
    value = state.get("train_scale")
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def prepare_model(model, cfg: TrainConfig, device: torch.device) -> None:
    """Set how `model` runs as `cfg` trained it: its precision and, with a frozen trunk, the trunk cache."""
    from ..device import autocast_dtype

    model.autocast_dtype = autocast_dtype(cfg.precision, device)
    if cfg.frozen_trunk:
        from .trunk import attach_trunk_cache

        attach_trunk_cache(model, cfg.feature_cache, cfg.train_blocks)
