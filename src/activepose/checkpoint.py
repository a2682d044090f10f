"""Checkpoints: written atomically, self-describing (model config + skeleton), loadable without the data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .fileio import atomic_write
from .skeleton import Skeleton

LOG = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not an activepose checkpoint."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (plus a format version) to `path` atomically: a crash never leaves a torn file."""
    state = {"format": "activepose", "version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Return the state stored at `path`; raise CheckpointError naming the file when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # weights_only=False: checkpoints also hold plain-Python training state (RNG, history); only load trusted files.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != "activepose":
        raise CheckpointError(f"{path}: not an activepose checkpoint")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Return (model in eval mode, skeleton, state) rebuilt from a checkpoint file."""
    from .models import build_model

    state = load_checkpoint(path, map_location=device)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model_state"])
    model.to(device).eval()
    return model, Skeleton.from_dict(state["skeleton"]), state


def resolve_device(device: str = "auto") -> torch.device:
    """Return the torch device for 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
