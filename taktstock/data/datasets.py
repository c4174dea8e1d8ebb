"""Map-style dataset over prepared arrays, addressed by (epoch, index) so augmentation is worker-independent."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from taktstock.config.schema import AugmentConfig
from taktstock.data.augment import augment_batch


class ArrayDataset(Dataset):
    """Samples of prepared arrays. Keys are ints or (epoch, index) pairs; the epoch seeds augmentation."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int = 0, augment: AugmentConfig | None = None) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(y))
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        x = self.x[index]
        if self.augment is not None:
            x = augment_batch(x[None], np.array([index]), epoch, self.seed, self.augment)[0]
        return x, self.y[index]
