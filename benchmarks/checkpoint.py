"""Checkpoint cost: CheckpointManager.save of a ResNet-18 training state, and its share of training time."""

from __future__ import annotations

import hashlib
import io
import shutil
import statistics
import time
from typing import Any

import torch
from torch import nn

from benchmarks.common import Options

# CIFAR-10: 50,000 training images, batch 512. EVERY_N_STEPS only numbers the benchmark's files.
CIFAR_TRAIN, CIFAR_BATCH, EVERY_N_STEPS = 50_000, 512, 500
# The default cadence (checkpoint.every_n_minutes: 5): at most one periodic checkpoint and one best.pt
# (kept in memory at an improvement, written with the next checkpoint) per five minutes, on any epoch length.
DEFAULT_INTERVAL_S, WRITES_PER_INTERVAL = 300.0, 2


def _resnet18(device: torch.device) -> nn.Module:
    from taktstock.models.registry import build_model

    return build_model("resnet", {}, (3, 32, 32), 10).to(device)


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """What Checkpointer.state holds (model, optimizer, RNGs, loop state); weights dominate."""
    from taktstock.training.rng import capture_rng
    from taktstock.training.state import LoopState, Sums

    return {
        "format": 1,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": None,
        "scaler": None,
        "rng": capture_rng(),
        "loop": LoopState().state_dict(),
        "sums": {"interval": Sums().state_dict(), "epoch": Sums().state_dict()},
        "world_size": 1,
    }


def _step_time(model: nn.Module, opt: torch.optim.Optimizer, device: torch.device, batch: int, repeats: int, bf16: bool) -> float:
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_checkpoint(opts: Options) -> dict[str, Any]:
    from taktstock.checkpoint.manager import CheckpointManager

    device = torch.device(opts.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = _resnet18(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({"fused": True} if cuda else {}))
    measured_batch = CIFAR_BATCH if cuda else (8 if opts.quick else 32)
    t_step = _step_time(model, opt, device, measured_batch, 2 if opts.quick else 3, bf16=cuda)

    directory = opts.workdir / "checkpoint-bench"
    shutil.rmtree(directory, ignore_errors=True)
    manager = CheckpointManager(directory, keep_last=3)
    manager.prepare()
    saves, parts = [], {"serialize": [], "sha256": []}
    for i in range(3 if opts.quick else 5):
        state = _state(model, opt)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        manager.save(state, (i + 1) * EVERY_N_STEPS)
        saves.append(time.perf_counter() - t0)
        # The two in-memory parts of a save, to explain where the time goes (the rest is write + fsync).
        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save(state, buf)
        parts["serialize"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hashlib.sha256(buf.getbuffer()).hexdigest()
        parts["sha256"].append(time.perf_counter() - t0)
    # checkpoint.async_write: the loop waits only for the host snapshot; the write overlaps training.
    from taktstock.checkpoint.async_writer import AsyncCheckpointManager

    background = AsyncCheckpointManager(manager)
    stalls = []
    for i in range(3 if opts.quick else 5):
        state = _state(model, opt)
        t0 = time.perf_counter()
        background.save(state, (i + 100) * EVERY_N_STEPS)
        stalls.append(time.perf_counter() - t0)
        background.wait()  # outside the timing: in training the next save is hundreds of steps later
    size = (directory / f"step-{EVERY_N_STEPS:08d}.pt").stat().st_size if (directory / f"step-{EVERY_N_STEPS:08d}.pt").exists() else None
    size = size or max(p.stat().st_size for p in directory.glob("step-*.pt"))
    shutil.rmtree(directory, ignore_errors=True)

    t_save, t_stall = statistics.median(saves), statistics.median(stalls)
    steps_per_epoch = -(-CIFAR_TRAIN // CIFAR_BATCH)
    t_step_512 = t_step * CIFAR_BATCH / measured_batch  # exact on GPU (measured at 512); linear estimate on CPU
    train_s = steps_per_epoch * t_step_512

    def share(per_save: float, saves: float, seconds: float) -> float:
        return saves * per_save / (seconds + saves * per_save)

    return {
        "device": opts.device,
        "checkpoint_mb": size / 2**20,
        "save_s": t_save,
        "serialize_s": statistics.median(parts["serialize"]),
        "sha256_s": statistics.median(parts["sha256"]),
        "step_s_measured": t_step,
        "measured_batch": measured_batch,
        "step_s_batch512": t_step_512,
        "step_time_estimated": not cuda,
        "steps_per_epoch": steps_per_epoch,
        "epoch_s_batch512": train_s,
        # Defaults: the worst case of the clock cadence, a periodic checkpoint and a best.pt every five minutes.
        "checkpoint_share": share(t_save, WRITES_PER_INTERVAL, DEFAULT_INTERVAL_S),
        # checkpoint.every_epoch=true (the earlier default): one save per CIFAR-10 epoch.
        "checkpoint_share_every_epoch": share(t_save, 1, train_s),
        "async_stall_s": t_stall,
        "checkpoint_share_async": share(t_stall, WRITES_PER_INTERVAL, DEFAULT_INTERVAL_S),
    }
