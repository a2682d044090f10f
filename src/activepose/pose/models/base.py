"""Shared pieces of the pose models: backbone base class, conv blocks, initialisation, weight loading."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from activepose.errors import EnvironmentProblem

from ...config import INIT_SCHEMES

LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFound(EnvironmentProblem, FileNotFoundError):
    """A weights file that was asked for (or that an extractor needs) is not on this machine."""


# Key prefixes that wrap a backbone's own names in common checkpoint layouts.
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "body.", "features.", "trunk.")


def conv_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, batch_norm: bool = False
) -> list[nn.Module]:
    """Return [conv, (bn), ReLU] with 'same' padding; the conv has no bias when followed by BN."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


class Backbone(nn.Module):
    """A trunk to output stride 8.

    `body` holds the (possibly ImageNet-pretrained) layers; `features(x)` is its output, which `embed`
    pools. `neck` adapts it to what the stages read (`forward(x) = neck(body(x))`, `out_channels`).
    """

    has_imagenet_weights: bool = False
    default_stages: int = 3

    def __init__(
        self,
        body: nn.Module,
        embed_channels: int,
        neck: nn.Module | None = None,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.body = body
        self.neck = neck if neck is not None else nn.Identity()
        self.embed_channels = embed_channels
        self.out_channels = out_channels if out_channels is not None else embed_channels

    def features(self, x: Tensor) -> Tensor:
        """Return the body's stride-8 features (B, embed_channels, H/8, W/8) of a normalised input."""
        return self.body(x)

    def split(self, trained_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
        """Return (frozen, trained) parts of the body: its last `trained_blocks` blocks, and those before them.

        `body == frozen + trained`; with 0 the trained part is empty (the identity).
        """
        blocks = list(self.body.children())
        if not 0 <= trained_blocks < len(blocks):
            raise ValueError(
                f"--train-blocks must be in [0, {len(blocks) - 1}] for this trunk of {len(blocks)} blocks, "
                f"got {trained_blocks}"
            )
        cut = len(blocks) - trained_blocks
        return nn.Sequential(*blocks[:cut]), nn.Sequential(*blocks[cut:])

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.body(x))

    # --- pretrained weights -------------------------------------------------------------------
    def default_weights(self) -> Path | None:
        """Return the local file with this backbone's ImageNet weights, or None when there is none."""
        return None

    def weights_hint(self) -> str:
        """Return how a user can provide weights for this backbone (used in error messages)."""
        return "pass a state-dict file of the backbone, or pretrained=False for random initialisation"

    def load_pretrained(self, pretrained: bool | str | Path | None) -> str | None:
        """Load weights into `body`; return the file used, or None when the body stays randomly initialised.

        True: the backbone's default local file (warning and random init when absent; never downloads).
        A path: that file (FileNotFoundError when missing).
        """
        if pretrained is None or pretrained is False:
            return None
        if pretrained is True:
            path = self.default_weights()
            if path is None:
                if self.has_imagenet_weights:
                    LOG.warning(
                        "%s: ImageNet weights not found locally, using random initialisation (%s)",
                        type(self).__name__,
                        self.weights_hint(),
                    )
                else:
                    LOG.info(
                        "%s: no ImageNet weights exist for this trunk; trained from scratch",
                        type(self).__name__,
                    )
                return None
        else:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise WeightsNotFound(f"pretrained weights file {path} does not exist: {self.weights_hint()}")
        state = load_state_file(path)
        loaded = assign_state(self.body, state, source=str(path))
        LOG.info("%s: loaded %d tensors from %s", type(self).__name__, loaded, path)
        return str(path)


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Return the state dict stored in `path` (unwrapping {'state_dict': ...} / {'model': ...})."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / non-torch files
        raise ValueError(f"{path}: not a readable torch state-dict file ({exc})") from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def assign_state(module: nn.Module, state: dict[str, Tensor], *, source: str = "state dict") -> int:
    """Copy `state` into `module`; return the number of tensors copied.

    Keys are matched by name after stripping wrapper prefixes; when names do not match (e.g. an older
    layout of the same network) tensors are matched by position, requiring equal shapes and leaf names.
    Extra tensors in `state` (classifier, later blocks) are ignored; anything missing is an error.
    """
    target = module.state_dict()
    renamed = OrderedDict((_strip(k), v) for k, v in state.items())
    if all(k in renamed for k in target):
        picked = OrderedDict((k, renamed[k]) for k in target)
    else:
        # Positional fallback: the module must be a prefix of the file's parameter sequence.
        file_items = list(renamed.items())
        if len(file_items) < len(target):
            missing = [k for k in target if k not in renamed][:5]
            raise ValueError(
                f"{source}: does not contain the weights of this backbone (missing e.g. {missing})"
            )
        picked = OrderedDict()
        for (name, ref), (file_name, tensor) in zip(target.items(), file_items, strict=False):
            if name.rsplit(".", 1)[-1] != file_name.rsplit(".", 1)[-1] or tensor.shape != ref.shape:
                raise ValueError(
                    f"{source}: tensor {file_name!r} {tuple(tensor.shape)} does not match backbone "
                    f"parameter {name!r} {tuple(ref.shape)}"
                )
            picked[name] = tensor
    for name, ref in target.items():
        if picked[name].shape != ref.shape:
            raise ValueError(
                f"{source}: {name!r} has shape {tuple(picked[name].shape)}, expected {tuple(ref.shape)}"
            )
    module.load_state_dict(picked, strict=True)
    return len(picked)


# --- initialisation ---------------------------------------------------------------------------
def conv_fans(conv: nn.Conv2d) -> tuple[int, int]:
    """Return (fan_in, fan_out) of a conv, counting only the channels one group connects."""
    receptive = math.prod(conv.kernel_size)
    # torch's own helper uses out_channels * k*k as fan_out, which overstates it for grouped/depthwise convs.
    fan_in = conv.in_channels // conv.groups * receptive
    fan_out = conv.out_channels // conv.groups * receptive
    return fan_in, fan_out


def glorot_bound(conv: nn.Conv2d) -> float:
    """Return the Glorot (Xavier) uniform bound sqrt(6 / (fan_in + fan_out)) of a conv."""
    fan_in, fan_out = conv_fans(conv)
    return math.sqrt(6.0 / (fan_in + fan_out))


@torch.no_grad()
def init_weights(module: nn.Module, scheme: str = "glorot") -> None:
    """Initialise every conv of `module` (Glorot or Kaiming uniform, zero bias) and reset norm layers."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}: use one of {', '.join(INIT_SCHEMES)}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if scheme == "glorot":
                bound = glorot_bound(m)
            else:
                # Kaiming uniform for ReLU (fan_in mode): bound = gain * sqrt(3 / fan_in), gain = sqrt(2).
                bound = math.sqrt(6.0 / conv_fans(m)[0])
            m.weight.uniform_(-bound, bound)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            m.reset_parameters()
