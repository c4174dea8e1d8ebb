"""Mixed precision: autocast context and (for fp16) a gradient scaler."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch


def autocast_factory(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling is needed for fp16 only; bf16 has fp32's exponent range."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
