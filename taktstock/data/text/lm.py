"""The language-modelling split: contiguous windows of `block_size` tokens from a memory-mapped token stream.

Windows are packed (no padding): window i of epoch e starts at `shift(seed, e) + i * block_size`, where the
shift in [0, block_size) moves the window boundaries each training epoch so a model does not see the same
cuts every time. The shift is a pure function of (seed, epoch), and the order of windows comes from the
sampler's (seed, epoch) permutation, so a resume reproduces every batch. Evaluation (an int key) uses shift 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from taktstock.data.dataset import SplitDataset
from taktstock.data.text.tokens import TokenStore


def epoch_shift(seed: int, epoch: int, block_size: int) -> int:
    """Offset of the first window in a training epoch, from (seed, epoch) only."""
    digest = hashlib.sha256(f"lm-shift:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % block_size


class LanguageModelingSplit(SplitDataset):
    """`{"input_ids": int64 [T], "labels": int64 [T]}` with labels the inputs shifted left by one token.

    Documents are concatenated with their end-of-document tokens, so a window may span a boundary, as in
    GPT-2 and nanoGPT training. Every window's tokens come from this split's documents only.
    """

    def __init__(self, store: TokenStore, block_size: int, seed: int) -> None:
        self.store = store
        self.block_size = block_size
        self.seed = seed
        # One window less than fits, so every epoch shift keeps the last window (and its label) in range.
        self._len = max(store.num_tokens // block_size - 1, 0)
        self._span = np.arange(block_size + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self._len

    def _start(self, index: int | np.ndarray, epoch: int | None) -> int | np.ndarray:
        shift = 0 if epoch is None else epoch_shift(self.seed, epoch, self.block_size)
        return shift + index * self.block_size

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        if not 0 <= index < self._len:
            raise IndexError(index)
        start = self._start(index, epoch)
        window = torch.from_numpy(self.store.tokens[start : start + self.block_size + 1].astype(np.int64))
        return {"input_ids": window[:-1], "labels": window[1:]}

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return default_collate(list(samples))

    def get_batch(self, indices: np.ndarray, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """A whole batch by one fancy index into the mapped tokens (the in-memory fast path)."""
        starts = self._start(np.asarray(indices, dtype=np.int64), epoch)
        windows = torch.from_numpy(self.store.tokens[starts[:, None] + self._span].astype(np.int64))
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}

    def tokens_per_sample(self) -> int:
        """Tokens that count in the loss per window (for tokens/s)."""
        return self.block_size
