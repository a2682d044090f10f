"""Named training presets and how a command's options, a preset and an existing run combine.

Precedence, highest first: options the user gave > the preset the user named > the run's own settings (when
`run_dir` already holds a model: continuing it needs the same architecture) > `TrainConfig`'s defaults (the
paper's). So `activepose train PROJECT` with no options continues exactly as the project's run was set up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# `paper`: the paper's settings (VGG-tiny at 256 px, batch 4, Adam 1e-4, patience 35): meant for a GPU.
# `cpu`: what trains usefully on 2 CPU cores: ImageNet MobileNetV2 trunk, slim stages, 128 px, a few epochs, and
# images loaded in the main process (on 2 cores, worker processes compete with the training threads: measured
# 23 vs 19 img/s on LSPET at 128 px, 31 vs 14 img/s on 96-px synthetic scenes).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {
        "backbone": "mobilenet_v2", "head_channels": 64, "input_size": 128, "batch_size": 8, "lr": 5e-4,
        "max_epochs": 8, "lr_step_epochs": 6, "patience": 8, "num_workers": 0,
    },
}  # fmt: skip
# Settings of the machine, not of the run: never inherited from an existing run.
_MACHINE = ("device", "num_workers", "budget_ends_session", "max_minutes")


def preset_values(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def resolve_train_config(run_dir: Path | None = None, preset: str | None = None, **given: Any):
    """Return the TrainConfig for a command: `given` options (None = not given) over the preset over the run's."""
    from ..train import TrainConfig, check_same_architecture, run_config

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
