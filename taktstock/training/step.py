"""The per-batch computation: move to device, forward, loss. Replaceable via train.step_fn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

StepFn = Callable[[nn.Module, Any, nn.Module], Any]


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Recursively move tensors (tuples, lists, dicts) to `device` without blocking the host."""
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        out = batch.to(device, non_blocking=True)
        if channels_last and out.ndim == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def default_step(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_fn: nn.Module
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets) -> (loss, outputs, targets)."""
    x, y = batch
    out = model(x)
    return loss_fn(out, y), out, y


def normalize_step_output(result: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A custom step may return just the loss, or (loss, outputs, targets) to feed the metrics."""
    if isinstance(result, torch.Tensor):
        return result, None, None
    if not (isinstance(result, (tuple, list)) and len(result) == 3 and isinstance(result[0], torch.Tensor)):
        from taktstock.errors import ConfigError

        got = f"a {type(result).__name__} of {len(result)}" if isinstance(result, (tuple, list)) else type(result).__name__
        raise ConfigError(f"train.step_fn: a step must return the loss tensor or (loss, outputs, targets); got {got}")
    loss, out, target = result
    return loss, out, target


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    return batch_size_of(batch[0])
