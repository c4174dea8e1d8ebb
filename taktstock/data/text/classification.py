"""The text-classification split: token ids from a memory-mapped store, padded per batch to the longest sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from taktstock.data.dataset import SplitDataset
from taktstock.data.text.tokens import TokenStore


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int, multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both int64 [B, L]: L is the longest sequence, rounded up to `multiple_of`."""
    longest = max((len(s) for s in sequences), default=0)
    if multiple_of:
        longest = -(-longest // multiple_of) * multiple_of
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class TextClassificationSplit(SplitDataset):
    """One split of a text-classification dataset.

    A sample is `{"input_ids": int64 [L], "labels": int64 []}`; `collate` pads a list of them to
    `{"input_ids", "attention_mask", "labels"}`. Text has no random transforms, so a training key
    `(epoch, index)` and an evaluation key `index` give the same sample.
    """

    def __init__(self, store: TokenStore, labels: np.ndarray, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        if len(store) != len(labels):
            raise ValueError(f"{len(store)} token sequences but {len(labels)} labels")
        self.store = store
        self.labels = labels
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index = key[1] if isinstance(key, tuple) else key
        return {
            "input_ids": torch.from_numpy(self.store[index].astype(np.int64)),
            "labels": torch.tensor(int(self.labels[index]), dtype=torch.int64),
        }

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([s["input_ids"].numpy() for s in samples], self.pad_id, self.pad_to_multiple_of)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([s["labels"] for s in samples])}

    def get_batch(self, indices: np.ndarray, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The collated batch of `indices` without building per-sample tensors."""
        ids, mask = pad_batch([self.store[int(i)] for i in indices], self.pad_id, self.pad_to_multiple_of)
        labels = torch.from_numpy(np.asarray(self.labels[np.asarray(indices)], dtype=np.int64))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def token_count(self) -> int:
        return self.store.num_tokens

    def describe(self) -> dict[str, Any]:
        lengths = self.store.lengths()
        return {"samples": len(self), "tokens": int(lengths.sum()), "max_length": int(lengths.max(initial=0))}
