"""Named training presets and how a command's options, a preset and an existing run combine.

Precedence, highest first: options the user gave > the preset the user named > the run's own settings (when
`run_dir` already holds a model: continuing it needs the same architecture) > `TrainConfig`'s defaults (the
paper's). So `activepose train PROJECT` with no options continues exactly as the project's run was set up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError

# `paper`: the paper's settings (VGG-tiny at 368 px, batch 4, Adam 1e-4, patience 35): meant for a GPU.
# `cpu`: what trains usefully on 2 CPU cores (figures: docs/training.md, benchmarks/cpu_training.py): the
# ImageNet MobileNetV2 trunk frozen, its features computed once per image and cached (activepose.pose.trunk); only
# the neck and three 64-channel stages trained, on 128-px windows of 256-px inputs (people at full scale for
# the cost of 128 px); bf16 autocast where the CPU has it; a one-cycle schedule per session (warm-up, then
# annealing: PCK 16.7 vs 10.4 % for step decay at 800 LSPET images); a fixed 5 x 64 batches per session, so every
# round costs the same (~1 min) however many labels there are, the model warm-starting from the last round's;
# no early stopping (it would cut the annealing short); images read in the main process (worker processes
# compete with 2 cores' threads).
# `small`: a short full fine-tuning (MobileNetV2, 128 px, 8 epochs; the cpu preset before the frozen trunk):
# first looks at a project, and `make demo` (at 96 px, lr 1e-3, on generated scenes).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"backbone": "vgg_tiny", "input_size": 368, "batch_size": 4, "lr": 1e-4, "patience": 35},
    "cpu": {
        "backbone": "mobilenet_v2", "head_channels": 64, "stages": 3, "input_size": 256, "frozen_trunk": True,
        "train_crop": 128, "precision": "bf16", "batch_size": 16, "lr": 3e-3, "lr_schedule": "onecycle",
        "max_epochs": 5, "steps_per_epoch": 64, "max_val_images": 100, "patience": 100, "num_workers": 0,
        "augment": None,
    },
    "small": {
        "backbone": "mobilenet_v2", "head_channels": 64, "input_size": 128, "batch_size": 8, "lr": 5e-4,
        "max_epochs": 8, "lr_step_epochs": 6, "patience": 8, "num_workers": 0,
    },
}  # fmt: skip
# What `activepose simulate --preset NAME` uses for the grid options a user does not give (see
# `simulation_settings`); `paper` is the paper's schedule (2,000 initial images, 1,000 per round).
SIMULATION_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"initial": 2000, "budget": 1000, "rounds": 5},
    "cpu": {"initial": 1000, "budget": 300, "rounds": 4, "tta": "clean,blur", "eval_max_images": 300,
            "max_candidates": 2000},
}  # fmt: skip
_SIMULATION_FALLBACK = {"tta": "all", "eval_max_images": None, "max_candidates": None}
# Settings of the machine, not of the run: never inherited from an existing run.
_MACHINE = ("device", "num_workers", "budget_ends_session", "max_minutes", "feature_cache")


def preset_values(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def simulation_settings(preset: str | None, **given: Any) -> dict[str, Any]:
    """Return the grid settings of `activepose simulate`: the options given (None: not given) > the preset's.

    `initial`, `budget` and `rounds` have no default without a preset: ConfigError names what is missing.
    """
    values = {**_SIMULATION_FALLBACK, **(SIMULATION_PRESETS.get(preset or "", {}))}
    values.update({k: v for k, v in given.items() if v is not None})
    missing = [f"--{k}" for k in ("initial", "budget", "rounds") if values.get(k) is None]
    if missing:
        raise ConfigError(f"give {', '.join(missing)} (or --preset {' / '.join(SIMULATION_PRESETS)})")
    return values


def resolve_train_config(run_dir: Path | None = None, preset: str | None = None, **given: Any):
    """Return the TrainConfig for a command: `given` options (None = not given) over the preset over the run's."""
    from ..pose.train import check_same_architecture, run_config

    base = TrainConfig()
    existing = run_config(run_dir) if run_dir is not None else None
    asked = {**preset_values(preset), **{k: v for k, v in given.items() if v is not None}}
    values: dict[str, Any] = {}
    if existing is not None:
        # Compared before the run's settings and the options combine: the run's `width` with another backbone
        # would otherwise be refused as a `--width` the user never gave.
        check_same_architecture(run_dir, existing.to_dict(), asked)
        values.update(
            {
                f.name: getattr(existing, f.name)
                for f in dataclasses.fields(existing)
                if f.name not in _MACHINE
            }
        )
    values.update(asked)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(base)})
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    return dataclasses.replace(base, **values)  # TrainConfig validates (ConfigError) in __post_init__
