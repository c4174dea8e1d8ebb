"""Preprocessing: raw data -> data/processed/wine.csv, the file the dataset reads.

    python -m data.preprocess

The example uses scikit-learn's bundled wine measurements (178 wines, 13 chemical features,
3 cultivars). Replace `load_raw()` with your own source (a database query, files, an API export);
everything downstream only sees the CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

PROCESSED_DIR = Path(__file__).resolve().parent / "processed"
CSV_PATH = PROCESSED_DIR / "wine.csv"
TARGET = "cultivar"


def load_raw() -> tuple[list[str], list[list[float]], list[str]]:
    """(feature names, feature rows, label per row)."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    labels = [str(bunch.target_names[t]) for t in bunch.target]
    return list(bunch.feature_names), bunch.data.tolist(), labels


def write_csv(path: Path = CSV_PATH) -> Path:
    """Write the CSV atomically (a half-written file never looks finished)."""
    features, rows, labels = load_raw()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*features, TARGET])
        for row, label in zip(rows, labels, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in row), label])
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(f"wrote {write_csv()}")
