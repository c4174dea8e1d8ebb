"""One pass over a split in eval mode, shared by validation during training and `taktstock evaluate`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from taktstock.metrics.collection import EpochMetrics
from taktstock.training.step import StepFn, batch_size_of, normalize_step_output, to_device


def run_eval(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: nn.Module,
    metrics: EpochMetrics,
    device: torch.device,
    autocast: Callable[[], Any],
    step_fn: StepFn,
    channels_last: bool = False,
) -> dict[str, float]:
    """Metrics over the whole split (not per-batch averages). Restores train mode afterwards."""
    was_training = model.training
    model.eval()
    metrics.reset()
    with torch.inference_mode():
        for batch in batches:
            batch = to_device(batch, device, channels_last)
            with autocast():
                loss, out, target = normalize_step_output(step_fn(model, batch, loss_fn), batch)
            if out is not None and target is not None:
                metrics.update(out, target, loss)
            else:
                metrics.update_loss(loss, batch_size_of(batch))
    model.train(was_training)
    return metrics.compute()
