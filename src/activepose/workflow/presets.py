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
# `cpu`: what trains usefully on 2 CPU cores (figures: docs/training.md, benchmarks/cpu_training.py and
# benchmarks/learner.py): the ImageNet MobileNetV2 trunk frozen, its features computed once per input and cached
# (activepose.pose.trunk), for the letterboxed image, its mirror and 4 augmented views per image (the paper's
# rotation, zoom, shift, colour and flips, drawn once per image); the trunk's last 3 blocks (at 0.1 x the rate),
# the neck and three 64-channel stages trained on those features, on 128-px windows of 256-px inputs (people at
# full scale for the cost of 128 px); bf16 autocast where
# the CPU has it; sessions trained to convergence: a plateau schedule on validation PCK (warm-up, x0.2 at each
# plateau, the third ends it), the best epoch kept (with 20+ validation images never worse than the last
# round's model), at most 4 batches per labelled image and at least 10 epochs of 64 batches; the model
# warm-starts from the last round's; images read in the main process (worker processes compete with 2 cores' threads).
# `small`: a short full fine-tuning (MobileNetV2, 128 px, 8 epochs; the cpu preset before the frozen trunk):
# first looks at a project, and `make demo` (at 96 px, lr 1e-3, on generated scenes).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"backbone": "vgg_tiny", "input_size": 368, "batch_size": 4, "lr": 1e-4, "patience": 35},
    "cpu": {
        "backbone": "mobilenet_v2", "head_channels": 64, "stages": 3, "input_size": 256, "frozen_trunk": True,
        "train_crop": 128, "precision": "bf16", "batch_size": 16, "lr": 3e-3, "num_workers": 0,
        "cached_views": 4, "train_blocks": 3, "trunk_lr_scale": 0.1, "lr_schedule": "plateau", "warmup_steps": 100, "val_metric": "pck",
        "steps_per_image": 4.0, "steps_per_epoch": 64, "max_epochs": 400, "min_epochs": 10, "patience": 1000,
        "lr_patience": 3, "lr_drops": 2, "lr_gamma": 0.2, "max_val_images": 100,
    },
    "small": {
        "backbone": "mobilenet_v2", "head_channels": 64, "input_size": 128, "batch_size": 8, "lr": 5e-4,
        "max_epochs": 8, "lr_step_epochs": 6, "patience": 8, "num_workers": 0,
    },
    # `footage`: the `cpu` learner with sessions sized for small budgets on video frames (youtube_pose: 32
    # initial + 4 x 32): epochs of 32 batches, at least 10 (320 batches, ~75 s on 2 cores however few the labels:
    # cold start from 32 frames needs them), the rate x0.2 after 2 epochs without a better validation PCK, the
    # second plateau ends the session, at most 2 batches per labelled image beyond the minimum.
    "footage": {},  # filled below from `cpu`
    # `gpu`: full fine-tuning of the ImageNet MobileNetV2 trunk with the paper's augmentation, bf16 autocast,
    # channels_last (PoseNet's default layout), 8 loader workers, batches of 64, and the `cpu` preset's rule for
    # converged rounds (plateau schedule on validation PCK, best checkpoint, a cap growing with the labels).
    "gpu": {
        "backbone": "mobilenet_v2", "head_channels": 128, "stages": 3, "input_size": 256, "precision": "bf16",
        "batch_size": 64, "lr": 1e-3, "lr_schedule": "plateau", "warmup_steps": 200, "val_metric": "pck",
        "steps_per_image": 4.0, "steps_per_epoch": 64, "max_epochs": 400, "min_epochs": 4, "patience": 1000,
        "lr_patience": 4, "lr_drops": 2, "lr_gamma": 0.2, "max_val_images": 300, "num_workers": 8,
    },
}  # fmt: skip
PRESETS["footage"] = {
    **PRESETS["cpu"], "steps_per_epoch": 32, "warmup_steps": 50, "min_epochs": 10, "lr_patience": 2, "lr_drops": 1,
    "steps_per_image": 2.0,
}  # fmt: skip
# What `activepose simulate --preset NAME` uses for the grid options a user does not give (see
# `simulation_settings`); `paper` is the paper's schedule (2,000 initial images, 1,000 per round).
SIMULATION_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"initial": 2000, "budget": 1000, "rounds": 5},
    "cpu": {"initial": 1000, "budget": 300, "rounds": 4, "tta": "clean,blur", "eval_max_images": 300,
            "max_candidates": 2000},
    "gpu": {"initial": 1000, "budget": 300, "rounds": 4, "tta": "clean,blur", "eval_max_images": None,
            "max_candidates": None},
    # small budgets on video frames (issue 20's youtube_pose grid): 32 initial + 4 x 32, clean + blur + dark
    "footage": {"initial": 32, "budget": 32, "rounds": 4, "tta": "clean,blur,dark", "eval_max_images": 300,
                "max_candidates": None},
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
