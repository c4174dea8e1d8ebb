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


def logits_of(output: Any) -> torch.Tensor:
    """A model's logits: the tensor itself, or `.logits` / `["logits"]` of a (Hugging Face style) output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    from taktstock.errors import ConfigError

    raise ConfigError(f"model: the default step needs a tensor of logits or an output with .logits, got {type(output).__name__}")


def is_sequence(out: torch.Tensor, target: torch.Tensor) -> bool:
    """(B, T, V) logits against (B, T) labels: a per-position (language modelling) target."""
    return target.ndim >= 2 and out.ndim == target.ndim + 1 and not target.is_floating_point()


def default_step(model: nn.Module, batch: Any, loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch -> (loss, logits, targets).

    `(inputs, target)` calls `model(inputs)`; a dict calls `model(**fields)` without `labels`, the
    target. Per-position labels are flattened with the logits, so the loss (ignore_index -100)
    counts real tokens only."""
    if isinstance(batch, dict):
        y = batch["labels"]
        out = logits_of(model(**{k: v for k, v in batch.items() if k != "labels"}))
    else:
        x, y = batch
        out = logits_of(model(x))
    if is_sequence(out, y):
        return loss_fn(out.flatten(0, -2), y.flatten()), out, y
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
    """Samples in a batch: the leading size of its first tensor (tuple, list or dict batches)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_size_of(batch["labels"] if "labels" in batch else next(iter(batch.values())))
    return batch_size_of(batch[0])


def count_of(batch: Any, out: torch.Tensor | None, target: torch.Tensor | None) -> int:
    """What a batch's mean loss averages over: its samples, or its real tokens (labels != -100) for
    per-position targets (that count is read on the host: one synchronisation per step for those)."""
    if out is not None and target is not None and is_sequence(out, target):
        return int((target != -100).sum())
    return batch_size_of(batch)
