"""ResNet-18 trunk at stride 8: stem + layer1-2 + layer3 with its stride replaced by dilation 2."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from activepose.pose.models.base import Backbone, conv_relu
from activepose.pose.models.registry import register_backbone

# torchvision's file names for ImageNet resnet18 weights (current IMAGENET1K_V1, then the legacy one).
RESNET18_FILES = ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth")


def hub_checkpoint_dir() -> Path:
    """Return torch hub's checkpoint directory (where torchvision caches downloaded weights)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class ResNet18S8(Backbone):
    """torchvision ResNet-18 up to layer3 (256 channels) at stride 8, then a 3x3 conv+ReLU neck."""

    has_imagenet_weights = True

    def __init__(self, neck_channels: int = 128) -> None:
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        layer3 = net.layer3
        # torchvision's BasicBlock refuses dilation > 1 at construction, so patch the built convs instead.
        first = layer3[0]
        first.conv1.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        for conv in (first.conv2, *(c for block in layer3[1:] for c in (block.conv1, block.conv2))):
            conv.dilation, conv.padding = (2, 2), (2, 2)
        body = nn.Sequential()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            body.add_module(name, getattr(net, name))
        embed = layer3[-1].conv2.out_channels
        neck = nn.Sequential(*conv_relu(embed, neck_channels, 3))
        super().__init__(body, embed_channels=embed, neck=neck, out_channels=neck_channels)

    def default_weights(self) -> Path | None:
        for name in RESNET18_FILES:
            path = hub_checkpoint_dir() / name
            if path.is_file():
                return path
        return None

    def weights_hint(self) -> str:
        return (
            f"copy torchvision's ImageNet file {RESNET18_FILES[0]} (from download.pytorch.org/models/) into "
            f"{hub_checkpoint_dir()} or pass its path, or use pretrained=False for random initialisation"
        )


@register_backbone("resnet18")
def resnet18_s8(neck_channels: int = 128) -> ResNet18S8:
    """Return a dilated ResNet-18 trunk at stride 8."""
    return ResNet18S8(neck_channels=neck_channels)
