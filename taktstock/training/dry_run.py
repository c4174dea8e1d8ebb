"""`taktstock train --dry-run`: what would run, without training."""

from __future__ import annotations

from pathlib import Path

import torch

from taktstock.config import config_to_yaml, load_config
from taktstock.data.loaders import build_train_batches
from taktstock.data.prepare import prepare
from taktstock.training import components
from taktstock.training.checks import check_config_fits_data
from taktstock.training.distributed import DistEnv


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
    print("# model")
    print(model)
    print(f"parameters: {params:,} ({trainable:,} trainable)")
    print("# data")
    for split in ("train", "val", "test"):
        print(f"{split}: {len(data.split(split)[1])} samples")
    x, y = next(iter(build_train_batches(*data.split("train"), config, device).epoch(0)))
    print(f"batch: inputs {tuple(x.shape)} {x.dtype}, targets {tuple(y.shape)} {y.dtype}")
    with torch.no_grad():
        out = model(x)
    print(f"outputs: {tuple(out.shape)}")
