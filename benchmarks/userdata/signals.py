"""1-D signals as a user writes them: a `Dataset` class and a small `Conv1d` net (no taktstock imports).

Four classes of noisy waveforms (sine, square, sawtooth, triangle) of length 40 with random
frequency and phase; `SignalDataset(augment=True)` adds a random shift and Gaussian noise in
`__getitem__` with NumPy's global generator, `SignalDataset(batched=True)` also offers PyTorch's
batched-fetch `__getitems__`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

LENGTH, CLASSES = 40, 4


def make_signals(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    t = np.arange(LENGTH, dtype=np.float64)[None, :]
    freq = rng.uniform(0.05, 0.15, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    u = 2 * np.pi * freq * t + phase
    waves = np.stack([np.sin(u), np.sign(np.sin(u)), ((u / np.pi) % 2) - 1, 2 * np.abs(((u / np.pi) % 2) - 1) - 1], axis=1)  # (n, 4, L)
    x = waves[np.arange(n), y] + rng.normal(0, 0.3, (n, LENGTH))
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


class SignalDataset(Dataset):
    """(1, 40) float32 signal -> class id; optionally a random shift + noise per read."""

    def __init__(self, n: int = 4000, seed: int = 0, augment: bool = False) -> None:
        self.x, self.y = make_signals(n, seed)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.x[index]
        if self.augment:
            x = np.roll(x, np.random.randint(-3, 4), axis=-1) + np.random.normal(0, 0.05, x.shape).astype(np.float32)
        return torch.from_numpy(x), int(self.y[index])


class BatchedSignalDataset(SignalDataset):
    """The same items, plus `__getitems__`: a batch of reads in one call (PyTorch's batched fetch)."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment:  # random items: one read each (taktstock seeds them per item)
            return [self[i] for i in indices]
        idx = np.asarray(indices)
        return torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])


class SignalNet(nn.Module):
    """A published-style 3-layer Conv1d classifier, 25 channels."""

    def __init__(self, input_shape: tuple[int, ...] = (1, LENGTH), num_outputs: int = CLASSES, channels: int = 25) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(input_shape[0], c, 5, padding=2), nn.ReLU(),
            nn.Conv1d(c, c, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(c, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        )  # fmt: skip
        self.head = nn.Linear(c, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class RowsSignalDataset(SignalDataset):
    """The same items, declared as rows of two in-memory arrays (`arrays()`): taktstock indexes them directly."""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y
