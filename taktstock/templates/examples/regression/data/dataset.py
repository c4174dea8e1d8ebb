"""The dataset taktstock trains on (config.yaml: data.source: data.dataset:DiabetesDataset).

taktstock calls `DiabetesDataset(**data.kwargs)`, reads items as `(features, target)` pairs by
index, and splits, normalises the features (fitted on the training split only) and batches them.
taktstock does not rescale regression targets, so the dataset brings them to order one
(`target_scale`); R2 is unaffected, MSE/MAE are reported in the scaled unit, and `taktstock predict`
undoes the scale through `predictions(values)`, so its values are in the CSV's unit.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data import preprocess


class DiabetesDataset(Dataset):
    """Rows of the diabetes CSV: 10 measurements -> disease progression / target_scale."""

    def __init__(self, path: str | None = None, target_scale: float = 100.0, one_hot_sex: bool = True) -> None:
        csv_path = Path(path) if path else preprocess.CSV_PATH
        if not csv_path.is_file():
            if path:
                raise FileNotFoundError(f"{csv_path} not found (run python -m data.preprocess)")
            preprocess.write_csv(csv_path)  # first use: build the default CSV
        if target_scale <= 0:
            raise ValueError(f"target_scale must be positive, got {target_scale}")
        self.target_scale = target_scale
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        self.columns = [k for k in rows[0] if k != preprocess.TARGET]
        # Category codes are fitted on the training file once, so predict's rows get the same columns.
        self.sex_codes = sorted({float(r["sex"]) for r in rows}) if one_hot_sex and "sex" in self.columns else []
        self.feature_names = [n for n in self.columns if not self.sex_codes or n != "sex"] + [f"sex={c:g}" for c in self.sex_codes]
        self.x = self.features(rows)
        self.y = np.array([float(r[preprocess.TARGET]) for r in rows], dtype=np.float32) / np.float32(target_scale)

    def features(self, rows: list[dict[str, str]]) -> np.ndarray:
        """Raw CSV rows (column -> value; other columns ignored) -> float32 features.

        The one place raw rows become model inputs: training uses it here, and `taktstock predict`
        calls it on new rows so they get exactly the same transform."""
        x = np.array([[float(r[k]) for k in self.columns] for r in rows], dtype=np.float32)
        if self.sex_codes:  # a category coded 1/2 is clearer as two indicator columns
            col = self.columns.index("sex")
            onehot = (x[:, col : col + 1] == np.array(self.sex_codes, dtype=np.float32)).astype(np.float32)
            x = np.concatenate([np.delete(x, col, axis=1), onehot], axis=1)
        return x

    def predictions(self, values: np.ndarray) -> np.ndarray:
        """Model outputs (scaled targets) -> disease progression: `taktstock predict` reports the CSV's unit."""
        return values * self.target_scale

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item at once: item i is (inputs[i], targets[i]). taktstock then indexes whole batches of these
        arrays instead of calling `__getitem__` per item (several times faster for small items). Remove it if
        `__getitem__` ever does more than index them (a random transform, a file read)."""
        return self.x, self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.float32]:
        return self.x[index], self.y[index]
