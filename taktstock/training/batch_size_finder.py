"""The largest micro-batch that fits, with the global batch kept as configured.

The samples per optimizer step, G = train.batch_size x train.accumulate_grad_batches, is what the results
depend on (with a mean loss, k micro-batches of G/k give the gradient of one batch of G: the trainer divides
each micro-batch's loss by k, and the sampler cuts the same samples in the same order). So only divisors m
of G are candidates, and the finder answers with train.batch_size = m, train.accumulate_grad_batches = G/m.

Candidates are tried from small to large, each with real optimizer steps on real training batches (one
warm-up step that also allocates the optimizer state, then timed steps), until one does not fit:
  * CUDA: the step raises torch.OutOfMemoryError; the probe frees what it held and empties the cache.
    The peak allocated memory of each step is reported.
  * CPU (or any device) with a memory budget: the estimate is parameters + gradients + optimizer state
    + the tensors autograd saved for the backward pass of the micro-batch (counted by storage, through
    saved-tensor hooks: deterministic, unlike the process's RSS). It leaves out temporaries inside ops and
    allocator overhead, so the budget should keep a margin. An out-of-memory error ends the search too.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from taktstock.training.probe import Probe

# Timed steps per candidate: at least 3 and 0.2 s (a tiny model's step is noise-sized), at most 50.
MIN_TIMED_STEPS, MIN_TIMED_S, MAX_TIMED_STEPS = 3, 0.2, 50


@dataclass
class Candidate:
    micro: int
    accumulate: int
    fits: bool
    memory_mb: float | None  # CUDA: peak allocated; else the estimate (None when it did not run)
    samples_per_s: float | None
    reason: str = ""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(global_batch: int, world_size: int, largest: int | None, n_train: int) -> list[int]:
    """Per-process micro-batches m (ascending) with m x world_size dividing the global batch, at most `largest`
    and never larger than one process's share of the training split."""
    per_rank = global_batch // world_size if global_batch % world_size == 0 else 0
    top = min(largest or per_rank, n_train // world_size)
    return [m for m in divisors(per_rank) if m <= top] if per_rank else []


def _fixed_bytes(probe: Probe) -> int:
    """Parameters, gradients (trainable ones) and optimizer state, in bytes."""
    params = sum(p.numel() * p.element_size() for p in probe.model.parameters())
    grads = sum(p.numel() * p.element_size() for p in probe.model.parameters() if p.requires_grad)
    state = sum(v.numel() * v.element_size() for s in probe.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return params + grads + state


def _batch_bytes(batch: object) -> int:
    if torch.is_tensor(batch):
        return batch.numel() * batch.element_size()
    if isinstance(batch, dict):
        return sum(_batch_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(_batch_bytes(v) for v in batch)
    return 0


class SavedBytes:
    """Bytes of distinct storages that autograd saves for backward (parameters excluded: counted as fixed)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude, self.seen, self.total = exclude, set(), 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def try_micro_batch(probe: Probe, micro: int, accumulate: int, budget_mb: float | None) -> Candidate:
    """Optimizer steps with micro-batches of `micro` samples on this process; whether they fit, their memory and throughput."""
    cuda = probe.device.type == "cuda"
    batches = probe.batches(micro).epoch(0)
    batch = next(iter(batches))
    try:
        if cuda:
            torch.cuda.synchronize(probe.device)
            torch.cuda.reset_peak_memory_stats(probe.device)
        counter = SavedBytes({p.untyped_storage().data_ptr() for p in probe.model.parameters()})
        with counter.hooks():
            probe.step([batch])  # warm-up: allocates the optimizer state, compiles, fills caches
        if cuda:
            memory = torch.cuda.max_memory_allocated(probe.device) / 2**20
        else:
            memory = (_fixed_bytes(probe) + counter.total + _batch_bytes(batch)) / 2**20
        if budget_mb is not None and memory > budget_mb:
            return Candidate(micro, accumulate, False, memory, None, "over --memory-budget")
        start, steps = time.perf_counter(), 0
        while steps < MIN_TIMED_STEPS or (time.perf_counter() - start < MIN_TIMED_S and steps < MAX_TIMED_STEPS):
            probe.step([batch])
            if cuda:
                torch.cuda.synchronize(probe.device)
            steps += 1
        rate = steps * micro / (time.perf_counter() - start)
        return Candidate(micro, accumulate, True, memory, rate)
    except torch.OutOfMemoryError:
        _free(probe)
        return Candidate(micro, accumulate, False, None, None, "out of memory")
    finally:
        del batch


def _free(probe: Probe) -> None:
    """After an out-of-memory error: drop the partial gradients and give cached blocks back."""
    probe.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if probe.device.type == "cuda":
        torch.cuda.empty_cache()


def find_batch_size(
    probe: Probe, largest: int | None = None, budget_mb: float | None = None, world_size: int = 1
) -> tuple[int, list[Candidate]]:
    """(global batch, the candidates tried in order); the last fitting one is the answer.

    `probe` is one process; `world_size` plans for a run on that many (one per device): the micro-batch is
    per process, the run's train.batch_size is micro x world_size."""
    t = probe.config.train
    global_batch = t.batch_size * t.accumulate_grad_batches
    sizes = candidates(global_batch, world_size, largest, len(probe.data.split("train")))
    tried: list[Candidate] = []
    for micro in sizes:
        found = try_micro_batch(probe, micro, global_batch // (micro * world_size), budget_mb)
        tried.append(found)
        if not found.fits:
            break
    return global_batch, tried
