"""Multi-process training: the process group (from torchrun/SLURM variables), model wrapping, and the
few collectives the loop needs so that every rank takes the same decisions.

Every collective helper is a no-op in a single process, so the loop calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taktstock.errors import ConfigError

if TYPE_CHECKING:
    import datetime

    import torch
    from torch import nn

    from taktstock.config.schema import Config
    from taktstock.training.state import Sums


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

    # -- collectives (no-ops in one process) ---------------------------------------------------
    # Host-side flags and objects go over a CPU (gloo) group: with NCCL they would otherwise cost a
    # device synchronisation per step.
    def any_rank(self, flag: bool, device: torch.device | None = None) -> bool:
        """True on every rank when `flag` is true on at least one."""
        if not self.enabled:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor(int(flag))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
        return bool(t.item())

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over ranks, in one all-reduce (e.g. preemption and the checkpoint clock)."""
        if not self.enabled:
            return flags
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
        return tuple(bool(v) for v in t.tolist())

    def all_ranks(self, flag: bool, device: torch.device | None = None) -> bool:
        """True on every rank only when `flag` is true on all of them."""
        return not self.any_rank(not flag, device)

    def first_step(self, step: torch.Tensor) -> torch.Tensor:
        """The smallest non-negative value over ranks (-1 where every rank has -1)."""
        if not self.enabled:
            return step
        import torch
        import torch.distributed as dist

        big = torch.iinfo(torch.int64).max
        t = torch.where(step < 0, torch.full_like(step, big), step)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return torch.where(t == big, torch.full_like(t, -1), t)

    def sum_sums(self, sums: Sums) -> Sums:
        """Running loss/correct/count sums added over ranks (a copy; the local sums are untouched)."""
        if not self.enabled:
            return sums
        import torch
        import torch.distributed as dist

        from taktstock.training.state import Sums

        count = torch.tensor(sums.count, dtype=torch.int64, device=sums.loss.device)
        total = Sums(sums.loss.clone(), sums.correct.clone())
        for t in (total.loss, total.correct, count):
            dist.all_reduce(t)
        total.count = int(count)
        return total

    def gather_object(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=_control_group())
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=_control_group())
        return box[0]


SYNC_BN_NEEDS_CUDA = "distributed.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm is GPU-only); set it to false on CPU"


def resolve_backend(config: Config) -> str:
    backend = config.distributed.backend
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo"


def check_world_size(config: Config, world_size: int) -> None:
    """train.batch_size is the global batch: it must split evenly into non-empty per-process batches."""
    if world_size <= 1:
        return
    b = config.train.batch_size
    if b < world_size:
        raise ConfigError(f"train.batch_size={b} is smaller than the number of processes ({world_size}): the per-process batch would be 0")
    if b % world_size:
        raise ConfigError(
            f"train.batch_size={b} (the global batch) is not divisible by the number of processes ({world_size}); "
            f"use a multiple of {world_size}, e.g. {b - b % world_size or world_size}"
        )
    if config.train.device.startswith("cuda:"):
        raise ConfigError(
            f"train.device={config.train.device} pins every process to one GPU; use train.device=cuda (or auto) in multi-process runs"
        )


def setup_distributed(config: Config) -> DistEnv:
    """Join the process group when launched by torchrun/SLURM; a no-op for a single process."""
    env = DistEnv.from_environ()
    if not env.enabled:
        return env
    check_world_size(config, env.world_size)
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = resolve_backend(config)
        device_id = None
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise ConfigError("distributed.backend=nccl needs CUDA GPUs; use gloo (or auto) on CPU")
            if env.local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"process with local rank {env.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                    "start at most one process per GPU"
                )
            device_id = torch.device("cuda", env.local_rank)
            torch.cuda.set_device(device_id)
        # SLURM exports MASTER_ADDR through the user's batch script; the port may be left to us.
        os.environ.setdefault("MASTER_PORT", "29500")
        timeout = datetime.timedelta(seconds=config.distributed.timeout_s)
        dist.init_process_group(
            backend, store=_store(env, timeout), rank=env.rank, world_size=env.world_size, timeout=timeout, device_id=device_id
        )
    global _CONTROL
    _CONTROL = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else None
    return env


_CONTROL: Any = None  # the CPU group for flags and objects when the main backend is not gloo


def _control_group() -> Any:
    return _CONTROL


def _store(env: DistEnv, timeout: datetime.timedelta) -> Any:
    """The rendezvous store, with a per-restart key prefix under torchrun.

    After an elastic restart torchrun's agent store still holds the previous worker group's
    addresses; without a fresh prefix a new rank can read a dead peer's address and the group
    fails to connect (torch's env:// handler assumes a new store per restart, which the c10d
    rendezvous does not give). Outside torchrun (SLURM, manual env): a plain TCP store.
    """
    import torch.distributed as dist

    if "MASTER_ADDR" not in os.environ:
        raise ConfigError("WORLD_SIZE/RANK are set but MASTER_ADDR is not: start multi-process runs with torchrun or set MASTER_ADDR")
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return dist.TCPStore(addr, port, env.world_size, is_master=env.rank == 0, timeout=timeout)
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(addr, port, env.world_size, is_master=not agent_hosts and env.rank == 0, timeout=timeout, multi_tenant=True)
    return dist.PrefixStore(f"taktstock/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown_distributed(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        global _CONTROL
        _CONTROL = None
        if dist.is_initialized():
            dist.destroy_process_group()


def wrap_model(model: nn.Module, config: Config, device: torch.device, env: DistEnv) -> nn.Module:
    """DistributedDataParallel (or FSDP2 with distributed.strategy=fsdp) in multi-process runs; the plain model otherwise."""
    if not env.enabled:
        return model
    from torch import nn

    if config.distributed.sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError(SYNC_BN_NEEDS_CUDA)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.distributed.strategy == "fsdp":
        return _fully_shard(model, device, env)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fully_shard(model: nn.Module, device: torch.device, env: DistEnv) -> nn.Module:
    """FSDP2 in place: every submodule that owns parameters is one unit, then the root.

    The module stays the same object (its class becomes an FSDPModule), so `model` and the
    forward model are one; its parameters become DTensors sharded over the ranks.
    """
    import contextlib

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (env.world_size,))
    units = [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)

    @contextlib.contextmanager
    def no_sync() -> Any:
        # FSDP2's counterpart of DDP.no_sync: accumulate unsharded gradients, reduce on the last micro-step.
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]

    model.no_sync = no_sync  # the trainer calls forward_model.no_sync() like DDP's
    return model


def is_sharded(config: Config, env: DistEnv) -> bool:
    return env.enabled and config.distributed.strategy == "fsdp"


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """FSDP model and optimizer state as full CPU tensors (a collective: every rank calls it, rank 0 gets the
    tensors, the others empty dicts), in the layout of the unsharded model's state dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any], optim_state: dict[str, Any]
) -> None:
    """Full (unsharded) state dicts, loaded on every rank, into an FSDP model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
