"""Settings live in `activepose.config`, without torch: the CLI starts without the engine, and the names the
settings accept stay in step with the engine's registries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from activepose import config
from activepose.errors import ConfigError

_LOADED = """
import json, sys
{code}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "cv2", "albumentations"))))
"""


def heavy_modules_after(code: str) -> list[str]:
    res = subprocess.run(
        [sys.executable, "-c", _LOADED.format(code=code)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_torch():
    assert heavy_modules_after("import activepose.cli") == []


@pytest.mark.parametrize(
    "args", [["--help"], ["train", "--help"], ["select", "--help"], ["annotate", "--help"]]
)
def test_help_loads_no_torch(args):
    code = (
        "from typer.testing import CliRunner\nfrom activepose.cli import app\n"
        f"res = CliRunner().invoke(app, {args!r})\nassert res.exit_code == 0, res.output\n"
        "assert 'Usage' in res.output\n"
    )
    assert heavy_modules_after(code) == []


def test_settings_load_no_torch_and_are_validated_when_made():
    assert heavy_modules_after("import activepose.config as c; c.TrainConfig(); c.SelectionConfig()") == []
    with pytest.raises(ConfigError, match="--th-hm"):
        config.UncertaintyConfig(th_hm=0.0)
    with pytest.raises(ConfigError, match="--extractor 'nope'"):
        config.SelectionConfig(extractor="nope")
    with pytest.raises(ConfigError, match="--backbone 'nope'"):
        config.TrainConfig(backbone="nope")


def test_the_settings_know_every_registered_backbone_extractor_and_ann_backend():
    from activepose.pose.models.registry import BACKBONES, backbone_options
    from activepose.sampling.ann import BACKENDS
    from activepose.sampling.features import EXTRACTORS

    assert {name: backbone_options(b) for name, b in BACKBONES.items()} == config.BACKBONES
    assert set(EXTRACTORS) == config.EXTRACTORS
    assert set(BACKENDS) == config.ANN_BACKENDS


def test_the_settings_know_every_strategy_and_tta_in_order():
    from activepose.pose.tta import TTAS
    from activepose.sampling.strategies import STRATEGIES

    assert list(STRATEGIES) == config.STRATEGIES
    assert tuple(TTAS) == config.TTA_NAMES
    assert (
        heavy_modules_after(
            "import activepose.config as c; c.SelectOptions(budget=1, strategy='ranked-hybrid')"
        )
        == []
    )


# TrainConfig fields with no command-line option, and why: set by other options or by the project, or internal.
_NOT_OPTIONS = {
    "augment": "--no-augment / --grayscale",
    "grayscale": "--grayscale",
    "device": "--device",
    "seed": "--seed",
    "init": "the run's own initial weights",
    "budget_ends_session": "the loop's --max-minutes",
    "targets": "heatmap sigma and PAF width: TargetConfig defaults",
    "stages": "the preset's",
    "betas": "Adam's",
    "weight_decay": "Adam's",
    "min_delta": "internal",
    "max_val_images": "the preset's",
    "keep_min_val": "internal",
}


def test_every_training_setting_of_a_preset_that_a_grid_varies_has_an_option():
    """A preset's setting with no option cannot be changed for one run (a grid that needs shorter sessions could
    not lower `min_epochs`); every TrainConfig field is an option unless listed above with its reason."""
    import dataclasses

    from activepose.commands.options import _TRAINING

    mapped = {field for _, field in _TRAINING.values() if field}
    fields = {f.name for f in dataclasses.fields(config.TrainConfig)}
    assert fields - mapped == set(_NOT_OPTIONS)
    assert {"min_epochs", "lr_patience", "lr_drops", "warmup_steps", "steps_per_image"} <= mapped
