"""OpenPose CPM-style stages: two branches (heatmaps K+1, PAFs 2L) per stage, as in OpenPose-plus."""

from __future__ import annotations

from torch import Tensor, nn

from activepose.pose.models.base import conv_relu

# OpenPose-plus VGG-tiny: stage 1 has 3 3x3 convs per branch, refinement stages 5; each branch then has a
# 1x1 conv and a linear 1x1 output conv. Refinement convs are 3x3 there too (the original OpenPose uses
# 7x7), which keeps the heads cheap on CPU while 5 stacked 3x3s still see an 11x11-cell window.
FIRST_STAGE_DEPTH = 3
REFINE_STAGE_DEPTH = 5


class Branch(nn.Sequential):
    """`depth` 3x3 conv+ReLU, a 1x1 conv+ReLU, then a linear 1x1 conv to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, channels: int, depth: int) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(depth):
            layers += conv_relu(c, channels, 3)
            c = channels
        layers += conv_relu(channels, channels, 1)
        layers.append(nn.Conv2d(channels, out_channels, 1))
        super().__init__(*layers)


class Stage(nn.Module):
    """One OpenPose stage: returns (heatmaps, pafs) from its input features."""

    def __init__(self, in_channels: int, num_heatmaps: int, num_pafs: int, channels: int, depth: int) -> None:
        super().__init__()
        self.heatmaps = Branch(in_channels, num_heatmaps, channels, depth)
        self.pafs = Branch(in_channels, num_pafs, channels, depth)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heatmaps(x), self.pafs(x)


def build_stages(
    feature_channels: int, num_heatmaps: int, num_pafs: int, *, stages: int, channels: int = 128
) -> nn.ModuleList:
    """Return stage 1 (reads the features) and `stages - 1` refinement stages (read features + previous outputs)."""
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    refine_in = feature_channels + num_heatmaps + num_pafs
    return nn.ModuleList(
        [Stage(feature_channels, num_heatmaps, num_pafs, channels, FIRST_STAGE_DEPTH)]
        + [Stage(refine_in, num_heatmaps, num_pafs, channels, REFINE_STAGE_DEPTH) for _ in range(stages - 1)]
    )
