"""The data pipeline: preprocessing output and what the dataset hands to taktstock."""

import csv

import numpy as np
from data.dataset import WineDataset

from data import preprocess


def test_preprocess_writes_header_and_one_row_per_sample(tmp_path):
    path = preprocess.write_csv(tmp_path / "wine.csv")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    features, data, _ = preprocess.load_raw()
    assert rows[0] == [*features, preprocess.TARGET]
    assert len(rows) - 1 == len(data)


def test_dataset_items_are_feature_vectors_and_class_ids(tmp_path):
    ds = WineDataset(str(preprocess.write_csv(tmp_path / "wine.csv")))
    x, y = ds[0]
    assert x.shape == (13,) and x.dtype == np.float32
    assert 0 <= int(y) < len(ds.classes) == 3
    assert len(ds) == 178


def test_log_features_are_transformed(tmp_path):
    path = str(preprocess.write_csv(tmp_path / "wine.csv"))
    plain, logged = WineDataset(path), WineDataset(path, log_features=["proline"])
    col = plain.feature_names.index("proline")
    assert np.allclose(logged.x[:, col], np.log1p(plain.x[:, col]))
