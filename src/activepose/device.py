"""The device a model runs on (`resolve_device`) and the arithmetic of its forward passes: fp32, or bf16
autocast where the hardware has it.

bf16 autocast roughly doubles training and triples inference speed on CPUs with AVX-512 BF16 / AMX (measured
on the 2-core AMD EPYC CI machine: `benchmarks/cpu_training.py`); elsewhere it is emulated and slower, so
`autocast_dtype` falls back to fp32 there and logs why.
"""

from __future__ import annotations

import logging

import torch

from .config import PRECISIONS, check_device
from .errors import ConfigError, EnvironmentProblem

LOG = logging.getLogger(__name__)


def bf16_supported(device: torch.device) -> bool:
    """Return True when `device` runs bf16 matrix maths natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for `precision` on `device` (None: fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if not bf16_supported(device):
        LOG.warning("--precision bf16: %s has no native bf16; running in fp32", device)
        return None
    return torch.bfloat16


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for 'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.

    Raises ConfigError for a string that is not a device and EnvironmentProblem when the device asked for
    is not on this machine, before any work starts.
    """
    spec = check_device(device)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"--device {spec}: no CUDA GPU is available on this machine (torch reports none); "
                "use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        index = int(spec.partition(":")[2] or 0)
        if index >= count:
            raise EnvironmentProblem(
                f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    elif spec.startswith("mps") and not _mps_available():
        raise EnvironmentProblem(
            "--device mps: no Apple MPS device is available on this machine; use --device cpu or auto"
        )
    return torch.device(spec)
