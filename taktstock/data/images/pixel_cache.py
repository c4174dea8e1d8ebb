"""The optional decoded cache: resized uint8 pixels of every indexed image in one memory-mapped .npy file.

Written once at prepare time; each DataLoader worker maps it lazily, so an epoch reads pixels without
decoding and the main process holds none of them. Random transforms still run per sample on top.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from taktstock.data.images.decode import DecodeError

FILE = "pixels.npy"


def pixel_bytes(n: int, channels: int, size: tuple[int, int]) -> int:
    return n * channels * size[0] * size[1]


def write_pixel_cache(
    path: Path, n: int, channels: int, size: tuple[int, int], load: Callable[[int], torch.Tensor], ids: np.ndarray
) -> list[int]:
    """Decode files `ids` with `load(id) -> uint8 (C, H, W)` into `path`; returns the ids that failed to decode."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, channels, *size))
    failed: list[int] = []

    def one(i: int) -> None:
        try:
            out[i] = load(i).numpy()
        except DecodeError:
            failed.append(i)

    # Decoding releases the GIL, so threads use every core without pickling pixels between processes.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, ids.tolist()))
    out.flush()
    return sorted(failed)


def open_pixel_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")
