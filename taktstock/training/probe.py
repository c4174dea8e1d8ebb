"""A throwaway training set-up for the finders (`find-lr`, `find-batch-size`): the model, optimizer, loss,
precision and training batches built by the same builders as `training.run`, and one optimizer step as the
trainer takes it (micro-batches, loss scaling, clipping). Nothing is written anywhere but the data cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taktstock.config.schema import Config
from taktstock.data.loaders import Batch, TrainBatches, build_train_batches
from taktstock.training import components
from taktstock.training.distributed import DistEnv
from taktstock.training.losses import build_loss
from taktstock.training.optim import build_optimizer
from taktstock.training.precision import autocast_factory, grad_scaler
from taktstock.training.step import StepFn, normalize_step_output, to_device


@dataclass
class Probe:
    config: Config
    data: Any
    device: torch.device
    dist: DistEnv
    model: nn.Module
    forward_model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler | None
    autocast: Any
    step_fn: StepFn

    @classmethod
    def build(cls, config: Config, dist: DistEnv) -> Probe:
        device, data, model, forward_model = components.prepare_and_build_model(config, dist)  # as training.run
        return cls(
            config=config,
            data=data,
            device=device,
            dist=dist,
            model=model,
            forward_model=forward_model,
            optimizer=build_optimizer(config.optim, model),
            loss_fn=build_loss(config.loss).to(device),
            scaler=grad_scaler(config.train.precision, device),
            autocast=autocast_factory(config.train.precision, device),
            step_fn=components.step_fn_for(config.train),
        )

    def batches(self, batch_size: int | None = None) -> TrainBatches:
        """The training split's batches (of `batch_size` per optimizer micro-step over all ranks; default train.batch_size)."""
        config = self.config
        if batch_size is not None:
            config = config.model_copy(update={"train": config.train.model_copy(update={"batch_size": batch_size})})
        return build_train_batches(self.data.split("train"), config, self.device, self.dist.rank, self.dist.world_size)

    def step(self, micro_batches: list[Batch]) -> torch.Tensor:
        """One optimizer step over `micro_batches` as the trainer takes it; returns the mean loss (a device scalar)."""
        model, n = self.forward_model, len(micro_batches)
        model.train()
        total = torch.zeros((), device=self.device)
        move = self.device.type != "cpu" or self.config.train.channels_last
        for i, batch in enumerate(micro_batches):
            if move:
                batch = to_device(batch, self.device, self.config.train.channels_last)
            no_sync = getattr(model, "no_sync", None)
            # As the trainer: DDP all-reduces gradients at the last micro-batch only.
            ctx = no_sync() if (no_sync is not None and i < n - 1) else _null()
            with ctx:
                with self.autocast():
                    loss = normalize_step_output(self.step_fn(model, batch, self.loss_fn), batch)[0]
                scaled = loss / n if n > 1 else loss
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach().float()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.config.train.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip_norm, foreach=True)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / n


def endless(batches: TrainBatches) -> Iterator[Batch]:
    """Batches epoch after epoch (the training order of epochs 0, 1, ...)."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()
