"""Process-group environment (torchrun / SLURM variables) for multi-process training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from taktstock.config.schema import Config


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls) -> DistEnv:
        env = os.environ
        if "WORLD_SIZE" in env and "RANK" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        return cls()


def setup_distributed(config: Config) -> DistEnv:
    """Join the process group when launched by torchrun/SLURM; a no-op for a single process."""
    env = DistEnv.from_environ()
    if not env.enabled:
        return env
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = config.distributed.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(
            backend, rank=env.rank, world_size=env.world_size, timeout=datetime.timedelta(seconds=config.distributed.timeout_s)
        )
    return env


def teardown_distributed(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap_model(model: nn.Module, config: Config, device: torch.device, env: DistEnv) -> nn.Module:
    """DistributedDataParallel in multi-process runs; the plain model otherwise."""
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if config.distributed.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
