"""Device selection: `train.device` (auto, cpu, cuda, cuda:N, mps) -> a torch.device that exists here."""

from __future__ import annotations

import torch

from taktstock.errors import ConfigError


def select_device(want: str, local_rank: int = 0) -> torch.device:
    """auto: this process's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    if want == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: '{want}' requested but CUDA is not available (use auto or cpu)")
        if want == "cuda":
            return torch.device(f"cuda:{local_rank}")
        index, count = want.partition(":")[2], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ConfigError(f"train.device: '{want}' does not exist ({count} CUDA device(s): cuda:0..cuda:{count - 1})")
    if want == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' requested but Apple MPS is not available (use auto or cpu)")
    return torch.device(want)
