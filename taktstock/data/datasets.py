"""`ArraySplit`: the in-memory implementation of a split, over prepared (inputs, target) arrays.

Keys are ints (evaluation) or (epoch, index) pairs (training: the epoch seeds the counter-based
augmentation, so any worker count augments a sample identically). `get_batch` gathers a whole
batch by index, the fast path that skips per-sample collation.
"""

from __future__ import annotations

import numpy as np
import torch

from taktstock.config.schema import AugmentConfig
from taktstock.data.augment import augment_batch, is_active
from taktstock.data.dataset import Key, SplitDataset, split_key


class ArraySplit(SplitDataset):
    """Samples `(x[i], y[i])` of prepared arrays, augmented per (seed, epoch, index) during training."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int = 0, augment: AugmentConfig | None = None) -> None:
        self.x, self.y = x, y
        self.seed = seed
        self.augment = augment if augment is not None and is_active(augment) else None
        self._xt: torch.Tensor | None = None
        self._yt: torch.Tensor | None = None

    def with_augment(self, seed: int, augment: AugmentConfig | None) -> ArraySplit:
        """The same arrays with training augmentation (the prepared split itself carries none)."""
        return ArraySplit(self.x, self.y, seed, augment)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) as tensors sharing the arrays' memory, made on first use (in each worker)."""
        if self._xt is None or self._yt is None:
            self._xt = torch.from_numpy(np.ascontiguousarray(self.x))
            self._yt = torch.from_numpy(np.ascontiguousarray(self.y))
        return self._xt, self._yt

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        x, y = self.tensors
        sample = x[index]
        if self.augment is not None and epoch is not None:
            sample = augment_batch(sample[None], np.array([index]), epoch, self.seed, self.augment)[0]
        return sample, y[index]

    def get_batch(self, indices: np.ndarray, epoch: int | None) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x, y = self.tensors
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        xb = torch.index_select(x, 0, idx)
        if self.augment is not None and epoch is not None:
            xb = augment_batch(xb, np.asarray(indices), epoch, self.seed, self.augment)
        return xb, torch.index_select(y, 0, idx)

    def __getstate__(self) -> dict:
        # Workers rebuild the tensor views from the arrays instead of pickling both.
        return self.__dict__ | {"_xt": None, "_yt": None}
