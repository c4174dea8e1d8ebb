"""Batch iteration for training and evaluation.

The batch order of every epoch is a pure function of (seed, epoch): resuming at batch k of epoch e
needs no replay, only slicing. Every path takes a `SplitDataset` and the interchangeable training
paths yield identical batches: `DataLoaderBatches` (worker processes, the split's collate),
`InMemoryBatches` (whole-batch indexing of resident arrays, no collate) and `GetBatchBatches` (a
split's own `get_batch`), chosen by `data.in_memory`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from taktstock.config.schema import Config
from taktstock.data.augment import augment_batch
from taktstock.data.dataset import SplitDataset
from taktstock.data.datasets import ArraySplit

Batch = Any  # a tuple (inputs, target) or a dict of named tensors, as the split's collate builds it


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochBatchSampler:
    """Yields this rank's batches of (epoch, index) keys for one epoch, starting at `start_batch`.

    A global batch of `batch_size` samples is cut from the epoch permutation and split into
    contiguous per-rank parts, so W processes see exactly the samples of one process's batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        order: Callable[[int, int], np.ndarray | None] | None = None,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.order = n, batch_size, seed, shuffle, order
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        # A split's own order (sharded sources: shard-blocked) when it has one, a pure function of (seed, epoch) too.
        perm = self.order(self.seed, epoch) if self.order is not None and self.shuffle else None
        if perm is None:
            perm = epoch_permutation(self.n, self.seed, epoch, self.shuffle)
        batches = [perm[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        # A trailing batch too small to give every rank a sample is dropped in multi-process runs.
        if self.world_size > 1 and batches and len(batches[-1]) < self.world_size:
            batches.pop()
        return batches

    def local_batches(self, epoch: int) -> list[np.ndarray]:
        return [np.array_split(b, self.world_size)[self.rank] for b in self.global_batches(epoch)]

    def global_batch_len(self, index: int) -> int:
        """Samples in global batch `index` over all ranks (the last one of an epoch may be partial)."""
        return min(self.batch_size, self.n - index * self.batch_size)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and (self.world_size == 1 or rest >= self.world_size) else 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in self.local_batches(self.epoch)[self.start_batch :]:
            yield [(self.epoch, int(i)) for i in b]


class TrainBatches(Protocol):
    """What the trainer needs from a training data path."""

    sampler: EpochBatchSampler

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]: ...


class DataLoaderBatches:
    """torch DataLoader with worker processes over a split: samples are read and collated in the workers."""

    def __init__(self, dataset: SplitDataset, sampler: EpochBatchSampler, config: Config, device: torch.device) -> None:
        self.sampler = sampler
        workers = config.data.num_workers
        self.loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=dataset.collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0 and config.data.persistent_workers,
            prefetch_factor=config.data.prefetch_factor if workers > 0 else None,
            # An explicit generator keeps the global torch RNG (dropout) untouched by loader start-up.
            generator=torch.Generator().manual_seed(config.seed),
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch, start_batch)
        yield from self.loader


class InMemoryBatches:
    """Whole-batch indexing of resident tensors (optionally on the accelerator): no per-sample collate.

    No host synchronisation per batch: an epoch's indices go to the device in one copy, and with
    augmentation (computed on the host from (seed, epoch, index)) the inputs stay in host memory and
    each augmented batch is copied through pinned memory without blocking.
    """

    def __init__(self, split: ArraySplit, sampler: EpochBatchSampler, device: torch.device | None, pin_memory: bool = False) -> None:
        self.sampler = sampler
        # Host-resident data for a CUDA run: batches are gathered straight into pinned memory, so the
        # trainer's non_blocking copy to the GPU overlaps compute instead of staging through pageable memory.
        self.pin = pin_memory and (device is None or device.type == "cpu")
        self.seed, self.augment = split.seed, split.augment
        self.x, self.y = split.tensors
        self.device = device if device is not None else torch.device("cpu")
        if self.device.type != "cpu":
            self.y = self.y.to(self.device)
            if self.augment is None:
                self.x = self.x.to(self.device)

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        batches = self.sampler.local_batches(epoch)[start_batch:]
        if not batches:
            return
        host_index = torch.from_numpy(np.concatenate(batches))
        index = host_index.to(self.device)  # one copy per epoch
        pin = self.device.type == "cuda"
        sizes = [len(b) for b in batches]
        # All of the epoch's per-batch index views in one op (slicing per batch costs one op each).
        for idx, part, host_part in zip(batches, index.split(sizes), host_index.split(sizes), strict=True):
            if self.augment is None:
                x = _gather(self.x, part, self.pin)
            else:
                x = augment_batch(_gather(self.x, host_part, False), idx, epoch, self.seed, self.augment)
                if self.device.type != "cpu":
                    x = (x.pin_memory() if pin else x).to(self.device, non_blocking=True)
                elif self.pin:
                    x = x.pin_memory()
            yield x, _gather(self.y, part, self.pin)


def _gather(t: torch.Tensor, index: torch.Tensor, pin: bool) -> torch.Tensor:
    """Rows `index` of `t`; index_select is the same as t[index] at half the dispatch cost."""
    if not pin:
        return torch.index_select(t, 0, index)
    out = torch.empty((len(index), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, index, out=out)


class GetBatchBatches:
    """A split's own whole-batch `get_batch(indices, epoch)`, in the main process (no workers, no collate)."""

    def __init__(self, split: SplitDataset, sampler: EpochBatchSampler) -> None:
        self.split, self.sampler = split, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        get_batch = self.split.get_batch
        assert get_batch is not None
        for idx in self.sampler.local_batches(epoch)[start_batch:]:
            yield get_batch(idx, epoch)


def use_in_memory(config: Config, nbytes: int) -> bool:
    mode = config.data.in_memory
    if mode == "auto":
        return config.data.num_workers == 0 and nbytes <= config.data.memory_budget_mb * 2**20
    return mode == "always"


def build_train_batches(split: SplitDataset, config: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> TrainBatches:
    """The training batches of `split` for this rank: a whole-batch fast path when the split has one and
    `data.in_memory` allows it, else a DataLoader with `data.num_workers` workers."""
    order = getattr(split, "epoch_order", None)  # optional: (seed, epoch) -> the epoch's order, or None for the default
    sampler = EpochBatchSampler(
        len(split), config.train.batch_size, config.seed, shuffle=True, rank=rank, world_size=world_size, order=order
    )
    if isinstance(split, ArraySplit) and use_in_memory(config, split.nbytes):
        target = device if (config.data.on_device and device.type != "cpu") else None
        return InMemoryBatches(split, sampler, target, pin_memory=device.type == "cuda")
    # A split without resident arrays has no size to compare with the budget: `auto` uses its fast path.
    if split.get_batch is not None and not isinstance(split, ArraySplit) and use_in_memory(config, 0):
        return GetBatchBatches(split, sampler)
    return DataLoaderBatches(split, sampler, config, device)


def eval_batches(split: SplitDataset, batch_size: int, rank: int = 0, world_size: int = 1, config: Config | None = None) -> Iterator[Batch]:
    """Sequential batches over this rank's contiguous shard of a split: every sample exactly once overall.

    Plain `int` keys (no random transforms); a split with `get_batch` is gathered whole-batch, any
    other through a DataLoader with `data.num_workers` workers (from `config`, else none)."""
    return repeated_eval_batches(split, batch_size, rank, world_size, config, persistent=False)()


def repeated_eval_batches(
    split: SplitDataset, batch_size: int, rank: int = 0, world_size: int = 1, config: Config | None = None, persistent: bool = True
) -> Callable[[], Iterator[Batch]]:
    """`eval_batches` for a split evaluated again and again (validation every epoch): a function returning a
    fresh pass each call. With worker processes and `data.persistent_workers` (and `persistent`), one DataLoader
    keeps its workers between passes, as a hand-written validation loader would, instead of starting new ones
    for every validation."""
    idx = np.array_split(np.arange(len(split)), world_size)[rank]
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if split.get_batch is not None:
        get_batch = split.get_batch
        return lambda: (get_batch(sel, None) for sel in chunks)
    workers = config.data.num_workers if config is not None else 0
    keep = persistent and workers > 0 and config is not None and config.data.persistent_workers

    def loader() -> DataLoader:
        return DataLoader(
            split,
            batch_sampler=[[int(i) for i in sel] for sel in chunks],
            collate_fn=split.collate,
            num_workers=workers,
            persistent_workers=keep,
            prefetch_factor=config.data.prefetch_factor if (config is not None and workers > 0) else None,
            # Without a generator the loader's base seed is drawn from the global torch RNG, so a validation pass
            # would shift the dropout of the training steps after it (and make them differ from the get_batch path).
            generator=torch.Generator().manual_seed(0),
        )

    if keep:
        kept = loader()
        return lambda: iter(kept)
    return lambda: iter(loader())
