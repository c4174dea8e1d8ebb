"""The dataset taktstock trains on (config.yaml: data.source: data.dataset:DigitsDataset).

taktstock calls `DigitsDataset(**data.kwargs)`, reads items as `(image, label)` pairs by index
in its DataLoader workers, and splits, normalises (fitted on the training split only) and batches them.
Training-time augmentation (random shifts, flips, noise) is configured under `data.augment`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data import preprocess


class DigitsDataset(Dataset):
    """Images from the preprocessed array file -> ((1, H, W) float32 in [0, 1], class id)."""

    def __init__(self, path: str | None = None, invert: bool = False) -> None:
        file = Path(path) if path else preprocess.PROCESSED
        if not file.is_file():
            if path:
                raise FileNotFoundError(f"{file} not found (run python -m data.preprocess)")
            preprocess.write_processed(file)  # first use: build the default file
        with np.load(file) as arrays:
            images, labels, classes = arrays["images"], arrays["labels"], arrays["classes"]
        x = images.astype(np.float32) / 255.0
        self.x = (1.0 - x if invert else x)[:, None]  # channel axis: (N, 1, H, W)
        self.y = labels.astype(np.int64)
        self.classes = [str(c) for c in classes]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item at once: item i is (inputs[i], targets[i]). taktstock then indexes whole batches of these
        arrays instead of calling `__getitem__` per item (several times faster for small items). Remove it if
        `__getitem__` ever does more than index them (a random transform, a file read)."""
        return self.x, self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        return self.x[index], self.y[index]
