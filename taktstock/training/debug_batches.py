"""Debug runs' batch sources: the first N batches of an epoch (train.limit_train_batches, train.limit_val_batches)
or the same N training batches every epoch, for training and validation (train.overfit_batches).

They wrap the real batch paths, so a debug run sees exactly the batches a full run would see first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from taktstock.config.schema import Config
from taktstock.data.loaders import Batch, EpochBatchSampler, TrainBatches


class LimitedBatches:
    """The first `limit` batches of each epoch of `inner` (resumable at any batch below the limit)."""

    def __init__(self, inner: TrainBatches, limit: int, fixed_epoch: int | None = None) -> None:
        self.inner, self.limit, self.fixed_epoch = inner, min(limit, len(inner)), fixed_epoch

    @property
    def sampler(self) -> EpochBatchSampler:
        return self.inner.sampler

    def __len__(self) -> int:
        return self.limit

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        # overfit_batches: every epoch is epoch 0 again, so order and augmentation stay those of the same N batches.
        source = self.inner.epoch(epoch if self.fixed_epoch is None else self.fixed_epoch, start_batch)
        yield from itertools.islice(source, max(0, self.limit - start_batch))


def debug_train_batches(batches: TrainBatches, config: Config) -> TrainBatches:
    """`batches`, limited as train.limit_train_batches or train.overfit_batches say (unchanged when neither is set)."""
    t = config.train
    if t.overfit_batches is not None:
        return LimitedBatches(batches, t.overfit_batches, fixed_epoch=0)
    if t.limit_train_batches is not None:
        return LimitedBatches(batches, t.limit_train_batches)
    return batches


def debug_val_batches(val: Callable[[], Any] | None, train: TrainBatches, config: Config) -> Callable[[], Any] | None:
    """Validation batches: the overfit training batches, or the first train.limit_val_batches of `val`."""
    t = config.train
    if t.overfit_batches is not None:
        return lambda: train.epoch(0)
    if val is not None and t.limit_val_batches is not None:
        limit = t.limit_val_batches
        return lambda: itertools.islice(val(), limit)
    return val
