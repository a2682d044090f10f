"""Backbone registry: a name -> builder dict filled by the `register_backbone` decorator (timm-style)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from activepose import config
from activepose.errors import ConfigError

if TYPE_CHECKING:
    from activepose.pose.models.base import Backbone

BackboneBuilder = Callable[..., "Backbone"]
BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Return a decorator that registers a backbone builder under `name`."""

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        existing = BACKBONES.get(name)
        # Re-registering the same function (module reload) is harmless; a different one is a name clash.
        if existing is not None and existing.__qualname__ != builder.__qualname__:
            raise ValueError(f"backbone {name!r} is already registered by {existing.__module__}")
        BACKBONES[name] = builder
        # settings are checked without importing the engine: tell them which TrainConfig options it takes
        config.BACKBONES[name] = backbone_options(builder)
        return builder

    return decorator


def backbone_options(builder: BackboneBuilder) -> tuple[str, ...]:
    """Return the TrainConfig options (beyond the common ones) that a backbone builder takes, e.g. ("width",)."""
    settings = {f.name for f in dataclasses.fields(config.TrainConfig)}
    return tuple(p for p in inspect.signature(builder).parameters if p in settings)


def get_backbone_builder(name: str) -> BackboneBuilder:
    """Return the builder registered as `name` (ConfigError, a ValueError, listing the known names otherwise)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}: use one of {', '.join(sorted(BACKBONES))}") from None


def list_backbones() -> list[str]:
    """Return the registered backbone names, sorted."""
    return sorted(BACKBONES)
