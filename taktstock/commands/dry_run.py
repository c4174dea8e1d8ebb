"""`taktstock train --dry-run`: what would run, without training.

Prints the resolved config, the model (layers and parameter counts), the split sizes and one
training batch pushed through the configured step (custom `train.step_fn` included), so shape
mistakes show up in seconds. Nothing is written except the prepared-data cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from taktstock.config import config_to_yaml, load_config
from taktstock.data.dataset import input_shape
from taktstock.data.loaders import build_train_batches
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError
from taktstock.training import components
from taktstock.training.checks import check_config_fits_data
from taktstock.training.distributed import DistEnv
from taktstock.training.losses import build_loss
from taktstock.training.optim import build_optimizer
from taktstock.training.step import normalize_step_output


def describe(value: Any) -> str:
    """Shapes and dtypes of a (nested) batch: tensors, tuples/lists and dicts."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    return type(value).__name__


def parameter_table(model: nn.Module) -> list[tuple[str, str, int]]:
    """(name, class, parameter count) of every module that owns parameters, in registration order."""
    rows = []
    for name, module in model.named_modules():
        count = sum(p.numel() for p in module.parameters(recurse=False))
        if count:
            rows.append((name or "(root)", type(module).__name__, count))
    return rows


def print_param_groups(optimizer: torch.optim.Optimizer) -> None:
    """Optimizer groups with their lr, weight decay and trainable/frozen parameter counts."""
    from taktstock.training.param_groups import group_counts

    print(f"{'parameter group':<28} {'lr':>10} {'decay':>8} {'trainable':>12} {'frozen':>12}")
    for name, lr, wd, trainable, frozen in group_counts(optimizer):
        print(f"{name:<28} {lr:>10.3g} {wd:>8.3g} {trainable:>12,} {frozen:>12,}")


def dry_run(config_path: Path | None, overrides: list[str]) -> None:
    config = load_config(config_path, overrides)
    print("# resolved config")
    print(config_to_yaml(config))
    data = prepare(config)
    check_config_fits_data(config, data)
    device = torch.device("cpu")
    model, _ = components.build_model_for(config, data, device, DistEnv())
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"# model: {config.model.name}")
    print(model)
    print(f"{'layer':<28} {'type':<20} {'parameters':>12}")
    for name, kind, count in parameter_table(model):
        print(f"{name:<28} {kind:<20} {count:>12,}")
    print(f"parameters: {params:,} ({trainable:,} trainable, {params - trainable:,} frozen)")
    print_param_groups(build_optimizer(config.optim, model))
    print("# data")
    print(f"source: {config.data.source} ({config.task}); input shape {input_shape(data.spec())}, outputs {data.num_outputs}")
    for split in ("train", "val", "test"):
        print(f"{split}: {len(data.split(split))} samples")
    train_batches = build_train_batches(data.split("train"), config, device)
    print(f"steps per epoch: {len(train_batches)} (batch_size {config.train.batch_size})")
    batch = next(iter(train_batches.epoch(0)))
    print(f"batch: {describe(batch)}")
    step_fn = components.step_fn_for(config.train)
    loss_fn = build_loss(config.loss).to(device)
    model.eval()  # no dropout noise and no BatchNorm statistics updates from a dry run
    try:
        with torch.no_grad():
            loss, out, target = normalize_step_output(step_fn(model, batch, loss_fn), batch)
    except ConfigError:
        raise
    except Exception as exc:  # the point of a dry run: report the shape error instead of a traceback deep in training
        where = config.train.step_fn or "the default step model(inputs) -> loss(outputs, targets)"
        raise ConfigError(f"the first batch failed in {where}: {type(exc).__name__}: {exc}") from None
    if out is not None:
        print(f"outputs: {describe(out)}; targets: {describe(target)}")
    print(f"initial loss: {float(loss):.4f}")
