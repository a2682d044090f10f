"""Pose models: a backbone registry and `PoseNet` (backbone to stride 8 + OpenPose stages).

Backbones register themselves on import of their module; the modules only import torch at top level
(torchvision is imported when a torchvision-based backbone is built), so importing this package is cheap.
"""

from activepose.pose.models.base import Backbone, glorot_bound, init_weights
from activepose.pose.models.posenet import PoseNet, build_model, create_model
from activepose.pose.models.registry import BACKBONES, get_backbone_builder, list_backbones, register_backbone

# Imported for their registration side effect.
from activepose.pose.models import mobilenet, resnet, vgg  # noqa: E402,F401  isort: skip

__all__ = [
    "BACKBONES",
    "Backbone",
    "PoseNet",
    "build_model",
    "create_model",
    "get_backbone_builder",
    "glorot_bound",
    "init_weights",
    "list_backbones",
    "register_backbone",
]
