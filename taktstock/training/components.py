"""Builders that turn config sections into the objects the trainer is assembled from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taktstock.checkpoint.atomic import atomic_write_bytes
from taktstock.config.schema import Config
from taktstock.data.prepare import PreparedData
from taktstock.errors import ConfigError
from taktstock.models.finetune import freeze
from taktstock.models.init import initialize
from taktstock.models.registry import build_model
from taktstock.models.weights import load_initial_weights
from taktstock.training import optim
from taktstock.training.distributed import DistEnv, wrap_model
from taktstock.training.losses import build_loss
from taktstock.training.precision import autocast_factory, grad_scaler
from taktstock.training.step import StepFn, default_step
from taktstock.utils.imports import import_object


def select_device(config: Config, dist: DistEnv) -> torch.device:
    want = config.train.device
    if want == "auto":
        return torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: '{want}' requested but CUDA is not available (use auto or cpu)")
        if want == "cuda":
            return torch.device(f"cuda:{dist.local_rank}")
        index, count = want.partition(":")[2], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ConfigError(f"train.device: '{want}' does not exist ({count} CUDA device(s): cuda:0..cuda:{count - 1})")
    if want == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' requested but Apple MPS is not available (use auto or cpu)")
    return torch.device(want)


def build_model_for(
    config: Config, data: PreparedData, device: torch.device, dist: DistEnv, initial_weights: bool = True
) -> tuple[nn.Module, nn.Module]:
    """(plain model, model to call): the second may be compiled and/or wrapped for multi-process training.

    `initial_weights=False` skips model.weights/model.pretrained (evaluation loads the run's own weights)."""
    task = getattr(data, "task", config.task)  # the prepared dataset's task once the dataset seam lands
    model = build_model(config.model.name, config.model.params(), data.input_shape, data.num_outputs, config.model.hf_config, task)
    initialize(model, config.model.init)
    # Fine-tuning: initial weights, then freezing, before the model is moved, wrapped or compiled.
    if initial_weights:
        load_initial_weights(model, config.model, announce=dist.is_main)
    freeze(model, config.model.freeze)
    model.to(device)
    if config.train.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    forward_model = wrap_model(model, config, device, dist)
    if config.train.compile:
        forward_model = torch.compile(forward_model)
    return model, forward_model


def build_loss_for(config: Config, device: torch.device) -> nn.Module:
    return build_loss(config).to(device)


def build_optimizer_for(config: Config, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return optim.build_optimizer(config, model, device)


def build_scheduler_for(config: Config, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    return optim.build_scheduler(config, optimizer, total_steps)


def grad_scaler_for(config: Config, device: torch.device) -> torch.amp.GradScaler | None:
    return grad_scaler(config.train.precision, device)


def autocast_for(config: Config, device: torch.device) -> Callable[[], Any]:
    return autocast_factory(config.train.precision, device)


def step_fn_for(config: Config) -> StepFn:
    return import_object(config.train.step_fn, "train.step_fn") if config.train.step_fn else default_step


def callbacks_for(config: Config) -> list[Any]:
    return [import_object(path, "train.callbacks")() for path in config.train.callbacks]


def save_weights(model: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write a plain state dict (or `state`, e.g. gathered FSDP weights) as safetensors, atomically
    (clone: safetensors refuses shared storage)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in (state if state is not None else model.state_dict()).items()}
    atomic_write_bytes(path, save(tensors))


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
