"""The trainer's parts, and what of them a run checkpoints (registered with the checkpointer).

To checkpoint something new (EMA weights, a stateful data position), add one `register` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from taktstock.checkpoint.checkpointer import Checkpointer, Value
from taktstock.config.schema import Config
from taktstock.data.loaders import TrainBatches
from taktstock.metrics.collection import EpochMetrics
from taktstock.tracking.base import TrackerGroup
from taktstock.tracking.jsonl import MetricsFile
from taktstock.training.distributed import DistEnv, full_state_dicts, is_sharded, load_full_state_dicts
from taktstock.training.monitor import MetricMonitor
from taktstock.training.rng import capture_rng, restore_rng
from taktstock.training.state import Sums
from taktstock.training.step import StepFn

if TYPE_CHECKING:
    from taktstock.training.ema import ModelEma
    from taktstock.training.trainer import Trainer


@dataclass
class TrainerParts:
    """The collaborators the loop computes with (built in `training.run`)."""

    model: nn.Module  # the plain module: state dicts never carry compile/DDP prefixes
    forward_model: nn.Module  # what is called: possibly compiled and/or DDP-wrapped
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    train_batches: TrainBatches
    val_batches: Callable[[], Any] | None
    val_metrics: EpochMetrics  # or TokenMetrics (language modelling): the same interface
    trackers: TrackerGroup
    metrics_file: MetricsFile
    monitor: MetricMonitor
    device: torch.device
    autocast: Callable[[], Any]
    step_fn: StepFn
    dist: DistEnv = field(default_factory=DistEnv)
    callbacks: list[Any] = field(default_factory=list)
    save_best_weights: Callable[[dict[str, Any]], None] | None = None  # rank 0: writes best.safetensors
    ema: ModelEma | None = None  # train.ema: updated after each optimizer step, validated instead of the model

    @property
    def eval_model(self) -> nn.Module:
        """What validation runs: the EMA weights when train.ema is set."""
        return self.ema.module if self.ema is not None else self.forward_model


class ShardedWeights:
    """FSDP model and optimizer as full (unsharded) state dicts; gathering is a collective on every rank."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model_state, optim_state = full_state_dicts(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])


class RNGState:
    """Python, NumPy and torch (CPU and CUDA) generators of this process."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)


def _merge_sums(states: list[dict[str, Any]], is_main: bool) -> dict[str, Any]:
    """A forced resume with another world size: rank 0 carries the sums of all former ranks."""
    if not is_main:
        return {k: Sums().state_dict() for k in ("interval", "epoch")}
    return {k: {f: sum(s[k][f] for s in states) for f in ("loss", "correct", "count")} for k in ("interval", "epoch")}


def register_parts(ckpt: Checkpointer, trainer: Trainer, sharded: bool) -> None:
    """Register everything the continuation of a run depends on (restored in this order, RNG last)."""
    p = trainer.p
    if sharded:
        ckpt.register("model", ShardedWeights(p.model, p.optimizer), collective=True, spans=("model", "optimizer"))
    else:
        ckpt.register("model", p.model)
        ckpt.register("optimizer", p.optimizer)
    if p.ema is not None:
        ckpt.register("ema", p.ema)
    ckpt.register("scheduler", p.scheduler)
    ckpt.register("scaler", p.scaler)
    ckpt.register("loop", trainer.state)  # epoch, batch position (EpochBatchSampler's data position), step, stop reason
    ckpt.register("monitor", p.monitor)
    ckpt.register("trackers", Value(p.trackers.state))  # read back by trackers.start on resume
    ckpt.register("metrics_offset", Value(lambda: p.metrics_file.offset() if p.dist.is_main else 0))
    ckpt.register("callbacks", trainer.callbacks)
    ckpt.register("sums", trainer.tally, per_rank=True, merge=_merge_sums)
    ckpt.register("rng", RNGState(), per_rank=True)


def full_model_state(model: nn.Module, config: Config, dist: DistEnv) -> dict[str, Any] | None:
    """The FSDP model's full state dict (a collective), or None for an unsharded model (use its own)."""
    if not is_sharded(config, dist):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
