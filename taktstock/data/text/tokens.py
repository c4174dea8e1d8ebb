"""Token ids on disk: one flat uint16/uint32 file of all tokens plus int64 offsets (sequence i is tokens[off[i]:off[i+1]]).

The reader maps the file lazily and drops the mapping when pickled, so each DataLoader worker opens its own
and the main process never holds the tokens in memory: peak memory does not grow with the data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id: uint16 up to 65,536 tokens, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_token_store(prefix: Path, sequences: Iterable[Any], vocab_size: int) -> int:
    """Stream `sequences` (lists or arrays of ids) to `prefix.bin` + `prefix.offsets.npy`; returns the token count.

    Sequences are appended one at a time, so writing needs memory for one sequence, not the corpus.
    """
    dtype = token_dtype(vocab_size)
    offsets = [0]
    with open(f"{prefix}.bin", "wb") as f:
        for seq in sequences:
            arr = np.asarray(seq, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ValueError(f"token id out of range for a vocabulary of {vocab_size}")
            f.write(arr.astype(dtype).tobytes())
            offsets.append(offsets[-1] + arr.size)
        f.flush()
        os.fsync(f.fileno())
    np.save(f"{prefix}.offsets.npy", np.asarray(offsets, dtype=np.int64))
    return offsets[-1]


class TokenStore:
    """Read-only, memory-mapped view of a token store written by `write_token_store`."""

    def __init__(self, prefix: str | Path, vocab_size: int) -> None:
        self.prefix = str(prefix)
        self.dtype = token_dtype(vocab_size)
        self.offsets = np.load(f"{self.prefix}.offsets.npy", mmap_mode="r")
        self._tokens: np.ndarray | None = None

    @property
    def tokens(self) -> np.ndarray:
        """All tokens, flat (mapped on first use in this process)."""
        if self._tokens is None:
            n = int(self.offsets[-1])
            # np.memmap refuses empty files; an empty split is a zero-length array.
            self._tokens = np.memmap(f"{self.prefix}.bin", dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)
        return self._tokens

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-open the files instead of receiving a copy of the mapped pages.
        return {"prefix": self.prefix, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.prefix, self.dtype = state["prefix"], state["dtype"]
        self.offsets = np.load(f"{self.prefix}.offsets.npy", mmap_mode="r")
        self._tokens = None
