"""Model weights as safetensors files (RUN_DIR/model.safetensors, best.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from taktstock.utils.atomic import atomic_write_bytes


def save_weights(model: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write a plain state dict (or `state`, e.g. gathered FSDP weights) as safetensors, atomically
    (clone: safetensors refuses shared storage)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in (state if state is not None else model.state_dict()).items()}
    atomic_write_bytes(path, save(tensors))


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
