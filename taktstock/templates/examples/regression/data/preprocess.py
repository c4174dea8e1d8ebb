"""Preprocessing: raw data -> data/processed/diabetes.csv, the file the dataset reads.

    python -m data.preprocess

The example uses scikit-learn's bundled diabetes data (442 patients, 10 baseline measurements,
disease progression one year later) in its original units. Replace `load_raw()` with your own
source; everything downstream only sees the CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

PROCESSED_DIR = Path(__file__).resolve().parent / "processed"
CSV_PATH = PROCESSED_DIR / "diabetes.csv"
TARGET = "progression"


def load_raw() -> tuple[list[str], list[list[float]], list[float]]:
    """(feature names, feature rows, target per row)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    return list(bunch.feature_names), bunch.data.tolist(), bunch.target.tolist()


def write_csv(path: Path = CSV_PATH) -> Path:
    """Write the CSV atomically (a half-written file never looks finished)."""
    features, rows, targets = load_raw()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*features, TARGET])
        for row, target in zip(rows, targets, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in row), f"{target:.6g}"])
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(f"wrote {write_csv()}")
