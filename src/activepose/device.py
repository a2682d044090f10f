"""Arithmetic precision of a model's forward passes: fp32, or bf16 autocast where the hardware has it.

bf16 autocast roughly doubles training and triples inference speed on CPUs with AVX-512 BF16 / AMX (measured
on the 2-core AMD EPYC CI machine: `benchmarks/cpu_training.py`); elsewhere it is emulated and slower, so
`autocast_dtype` falls back to fp32 there and logs why.
"""

from __future__ import annotations

import logging

import torch

from .errors import ConfigError

LOG = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16")


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
