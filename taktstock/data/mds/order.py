"""The shard-blocked training order (`data.shuffle_block`): a pure function of (seed, epoch) and the shard sizes.

Each epoch permutes the shards, groups the permuted shards into blocks of `block` shards, and permutes the
samples within each block; the epoch order is the blocks' orders one after the other. A reader then needs
only the shards of the block it is in (and of the next one, to prefetch), which is what lets a cache smaller
than the dataset train it. Every DDP rank and DataLoader worker computes the same order with no communication.
"""

from __future__ import annotations

import numpy as np


def shard_blocks(n_shards: int, seed: int, epoch: int, block: int) -> list[np.ndarray]:
    """The shard ids of each block of `epoch`, in the order the epoch reads them."""
    perm = np.random.default_rng([seed, epoch, 1]).permutation(n_shards)
    return [perm[i : i + block] for i in range(0, n_shards, block)]


def blocked_order(ends: np.ndarray, seed: int, epoch: int, block: int) -> np.ndarray:
    """Every sample index exactly once: block by block, shuffled within each block.

    `ends` are the shards' cumulative sample counts (shard s holds samples ends[s-1]..ends[s]-1)."""
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    rng = np.random.default_rng([seed, epoch, 2])  # separate stream from the shard permutation's
    parts = []
    for shards in shard_blocks(len(ends), seed, epoch, block):
        members = np.concatenate([np.arange(starts[s], ends[s], dtype=np.int64) for s in shards])
        parts.append(rng.permutation(members))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class BlockWindows:
    """Which shards a reader at a training sample must keep: those of its block and of the next one.

    The next block of an epoch's last block is the first block of the next epoch (a prefetching loader
    may already read it). Cached per epoch: a worker asks for every sample it reads.
    """

    def __init__(self, ends: np.ndarray, seed: int, block: int) -> None:
        self.ends, self.seed, self.block = ends, seed, block
        self._epochs: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}

    def _blocks(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.clear()
            blocks = shard_blocks(len(self.ends), self.seed, epoch, self.block)
            position = np.empty(len(self.ends), np.int64)
            for b, shards in enumerate(blocks):
                position[shards] = b
            self._epochs[epoch] = (blocks, position)
        return self._epochs[epoch]

    def window(self, epoch: int, shard: int) -> tuple[int, frozenset[int]]:
        """(a key naming the window, the shard ids in it) for a reader of `shard` in `epoch`."""
        blocks, position = self._blocks(epoch)
        b = int(position[shard])
        following = blocks[b + 1] if b + 1 < len(blocks) else self._blocks(epoch + 1)[0][0]
        return epoch * len(blocks) + b, frozenset(int(s) for s in np.concatenate([blocks[b], following]))
