"""The data pipeline: preprocessing output and what the dataset hands to taktstock."""

import csv

import numpy as np
import pytest
from data.dataset import DiabetesDataset

from data import preprocess


def test_preprocess_writes_header_and_one_row_per_patient(tmp_path):
    path = preprocess.write_csv(tmp_path / "diabetes.csv")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    features, data, _ = preprocess.load_raw()
    assert rows[0] == [*features, preprocess.TARGET]
    assert len(rows) - 1 == len(data) == 442


def test_targets_are_scaled_and_sex_is_one_hot(tmp_path):
    path = str(preprocess.write_csv(tmp_path / "diabetes.csv"))
    raw = DiabetesDataset(path, target_scale=1.0, one_hot_sex=False)
    ds = DiabetesDataset(path, target_scale=100.0)
    assert np.allclose(ds.y * 100.0, raw.y)
    assert ds.x.shape == (442, 11) and ds.feature_names[-2:] == ["sex=1", "sex=2"]
    assert np.array_equal(ds.x[:, -2:].sum(1), np.ones(442, np.float32))
    x, y = ds[0]
    assert x.dtype == np.float32 and y.dtype == np.float32


def test_rejects_a_non_positive_target_scale(tmp_path):
    with pytest.raises(ValueError, match="target_scale"):
        DiabetesDataset(str(preprocess.write_csv(tmp_path / "diabetes.csv")), target_scale=0)
