"""PoseNet: backbone (stride 8) + OpenPose stages, and the factory functions that build it."""

from __future__ import annotations

import copy
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from activepose.pose.models.base import IMAGENET_MEAN, IMAGENET_STD, init_weights
from activepose.pose.models.heads import build_stages
from activepose.pose.models.registry import get_backbone_builder

LOG = logging.getLogger(__name__)

# Config keys that describe how a model was made but are not constructor arguments.
_INFO_KEYS = ("stride", "pretrained")


class PoseNet(nn.Module):
    """Bottom-up pose network: per stage (heatmaps (B, K+1, H/8, W/8), pafs (B, 2L, H/8, W/8)).

    Input: RGB float in [0, 1], (B, 3, H, W) with H, W multiples of 8; ImageNet normalisation is done inside.
    `config` rebuilds the same architecture via `build_model` (weights come from a state dict).
    """

    stride: int = 8

    def __init__(
        self,
        backbone: str = "vgg_tiny",
        *,
        num_keypoints: int,
        num_limbs: int,
        stages: int | None = None,
        channels: int = 128,
        init: str = "glorot",
        backbone_options: dict[str, Any] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if num_keypoints < 1 or num_limbs < 0:
            raise ValueError(f"need num_keypoints >= 1 and num_limbs >= 0, got {num_keypoints}, {num_limbs}")
        options = dict(backbone_options or {})
        builder = get_backbone_builder(backbone)
        accepted = set(inspect.signature(builder).parameters)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(
                f"backbone {backbone!r} does not take option(s) {', '.join(unknown)} "
                f"(it accepts: {', '.join(sorted(accepted)) or 'none'})"
            )
        self.backbone = builder(**options)
        stages = int(stages if stages is not None else self.backbone.default_stages)
        self.num_keypoints = num_keypoints
        self.num_limbs = num_limbs
        self.num_heatmaps = num_keypoints + 1
        self.num_pafs = 2 * num_limbs
        self.stages = build_stages(
            self.backbone.out_channels, self.num_heatmaps, self.num_pafs, stages=stages, channels=channels
        )
        init_weights(self, init)
        self.embed_dim = self.backbone.embed_channels
        # Not part of the architecture nor of the state dict: set by whoever runs the model.
        self.trunk_cache = (
            None  # activepose.pose.trunk.attach_trunk_cache: frozen-trunk features read from a cache
        )
        self.autocast_dtype: torch.dtype | None = None  # activepose.device: e.g. torch.bfloat16
        # The trunk's last blocks that run after `trunk()` (trained on its cached output): `set_trained_blocks`.
        self.trained_blocks = 0
        # Kept outside the module tree (plain attribute): they are views of `backbone.body`, not new weights.
        self.__dict__["_parts"] = (self.backbone.body, nn.Sequential())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # channels_last is ~1.7x faster for these convs on CPU (oneDNN) and helps GPU AMP; not architecture.
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "num_keypoints": num_keypoints,
            "num_limbs": num_limbs,
            "stages": stages,
            "channels": channels,
            "init": init,
            "backbone_options": options,
            "stride": self.stride,
            "pretrained": None,
        }

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def set_trained_blocks(self, n: int) -> None:
        """Make `trunk()` stop `n` blocks before the body's end; `forward_features` runs those `n` blocks.

        Not architecture (the weights are the same): how a frozen-trunk model was trained, set on loading.
        """
        self.__dict__["_parts"] = self.backbone.split(n)
        self.trained_blocks = int(n)

    def trunk_part(self) -> nn.Module:
        """Return the part of the trunk that `trunk()` runs (the whole body unless blocks after it train)."""
        return self._parts[0]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trunk_cache is not None and mode:
            # Frozen trunk: its trained blocks keep their ImageNet batch-norm statistics (batches of small
            # windows would drift them); their weights still train.
            self.backbone.body.eval()
        return self

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise ValueError(
                f"input height and width must be multiples of {self.stride}, got {tuple(x.shape[2:])}"
            )
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Return [(heatmaps, pafs)] for every stage, the last one being the final prediction."""
        return self.forward_features(self.trunk(x))

    def _autocast(self, x: Tensor):
        dtype = self.autocast_dtype
        return torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def trunk(self, x: Tensor) -> Tensor:
        """Return the trunk's float32 features (B, C, H/8, W/8) of images (from the cache when attached): the
        body's output (embed_dim channels), or with `set_trained_blocks(n)` the output of the blocks before the
        last n."""
        x = self._prepare(x)
        with self._autocast(x):
            features = self.trunk_cache(x) if self.trunk_cache is not None else self._parts[0](x)
        return features.float()

    def forward_features(self, trunk: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Return the stages' outputs from the trunk's features (`trunk`) instead of from an image."""
        if self.channels_last:
            trunk = trunk.contiguous(memory_format=torch.channels_last)
        with self._autocast(trunk):
            return self._stages(trunk)

    def _stages(self, trunk: Tensor) -> list[tuple[Tensor, Tensor]]:
        features = self.backbone.neck(self._parts[1](trunk) if self.trained_blocks else trunk)
        outputs: list[tuple[Tensor, Tensor]] = []
        heatmaps, pafs = self.stages[0](features)
        outputs.append((heatmaps, pafs))
        for stage in self.stages[1:]:
            heatmaps, pafs = stage(torch.cat([features, heatmaps, pafs], dim=1))
            outputs.append((heatmaps, pafs))
        # Callers may .view() the outputs; hand back standard (NCHW-contiguous) tensors.
        return [(h.float().contiguous(), p.float().contiguous()) for h, p in outputs]

    def embed(self, x: Tensor) -> Tensor:
        """Return (B, embed_dim) global-average-pooled trunk features (before the neck and stages)."""
        return self.backbone.features(self._prepare(x)).mean(dim=(2, 3))


def create_model(
    backbone: str = "vgg_tiny",
    *,
    num_keypoints: int,
    num_limbs: int,
    stages: int | None = None,
    pretrained: bool | str | Path = True,
    init: str = "glorot",
    channels: int = 128,
    **backbone_options: Any,
) -> PoseNet:
    """Return a new PoseNet; `pretrained` loads backbone weights (True: local default file, never downloads).

    Convs not loaded from weights are initialised with `init` ('glorot' uniform, or 'kaiming' uniform).
    Extra keyword arguments go to the backbone builder (e.g. `width=0.5` for vgg_tiny).
    """
    model = PoseNet(
        backbone,
        num_keypoints=num_keypoints,
        num_limbs=num_limbs,
        stages=stages,
        channels=channels,
        init=init,
        backbone_options=backbone_options,
    )
    # load_state_dict copies into the existing parameters, so their channels_last layout is kept.
    source = model.backbone.load_pretrained(pretrained)
    model.config["pretrained"] = source
    return model


def build_model(config: dict[str, Any]) -> PoseNet:
    """Return a randomly initialised PoseNet with the architecture described by `config` (PoseNet.config).

    No pretrained weights are read: load the checkpoint's state dict afterwards.
    """
    kwargs = copy.deepcopy(dict(config))
    stride = kwargs.get("stride", PoseNet.stride)
    if stride != PoseNet.stride:
        raise ValueError(f"config has stride {stride}, this PoseNet has stride {PoseNet.stride}")
    for key in _INFO_KEYS:
        kwargs.pop(key, None)
    try:
        model = PoseNet(**kwargs)
    except TypeError as exc:
        raise ValueError(f"invalid model config {config!r}: {exc}") from exc
    model.config["pretrained"] = config.get("pretrained")
    return model
