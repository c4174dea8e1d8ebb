"""The dataset taktstock trains on (config.yaml: data.source: data.dataset:WineDataset).

taktstock calls `WineDataset(**data.kwargs)`, reads items as `(features, target)` pairs by
index, and splits, normalises (fitted on the training split only) and batches them.
`classes` names the class ids for reports and the confusion matrix.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data import preprocess


class WineDataset(Dataset):
    """Rows of the wine CSV: 13 features (some log-transformed) -> cultivar id."""

    def __init__(self, path: str | None = None, log_features: list[str] | None = None) -> None:
        csv_path = Path(path) if path else preprocess.CSV_PATH
        if not csv_path.is_file():
            if path:
                raise FileNotFoundError(f"{csv_path} not found (run python -m data.preprocess)")
            preprocess.write_csv(csv_path)  # first use: build the default CSV
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        self.feature_names = [k for k in rows[0] if k != preprocess.TARGET]
        for name in log_features or []:
            if name not in self.feature_names:
                raise ValueError(f"log_features: unknown column '{name}' (columns: {', '.join(self.feature_names)})")
        self.log_features = list(log_features or [])
        self.x = self.features(rows)
        labels = [r[preprocess.TARGET] for r in rows]
        self.classes = sorted(set(labels))
        self.y = np.array([self.classes.index(v) for v in labels], dtype=np.int64)

    def features(self, rows: list[dict[str, str]]) -> np.ndarray:
        """Raw CSV rows (column -> value; other columns ignored) -> float32 features.

        The one place raw rows become model inputs: training uses it here, and `taktstock predict`
        calls it on new rows so they get exactly the same transform."""
        x = np.array([[float(r[k]) for k in self.feature_names] for r in rows], dtype=np.float32)
        # Skewed, positive measurements are easier to learn on a log scale.
        for name in self.log_features:
            col = self.feature_names.index(name)
            x[:, col] = np.log1p(np.clip(x[:, col], 0.0, None))
        return x

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item at once: item i is (inputs[i], targets[i]). taktstock then indexes whole batches of these
        arrays instead of calling `__getitem__` per item (several times faster for small items). Remove it if
        `__getitem__` ever does more than index them (a random transform, a file read)."""
        return self.x, self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        return self.x[index], self.y[index]
