"""Index-encoded tables (`data.categorical_encoding: index`) as per-split datasets of the dataset seam.

A sample is {"numeric": float32[n], "categorical": int64[k], "labels": y}: what the `tabular` model's embeddings
take. `prepare_index_table` fits the encoding and the numeric normalisation on the training split, writes each
split as .npy files under data.cache_dir, and every `TableSplit` memory-maps them lazily (in each DataLoader
worker), so memory does not grow with the table.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taktstock.config.schema import Config
from taktstock.data.dataset import FieldSpec, Key, Spec, SplitDataset, split_key
from taktstock.data.prepare import SPLITS, Normalizer, _split_indices, fingerprint
from taktstock.errors import ConfigError

FIELDS = ("numeric", "categorical", "labels")


class TableSplit(SplitDataset):
    """One split of a prepared, index-encoded table. Keys are ints or (epoch, index); nothing here is random."""

    def __init__(self, directory: Path, split: str) -> None:
        self.directory = Path(directory)
        self.split = split
        self._arrays: dict[str, np.ndarray] | None = None
        self._len = int(json.loads((self.directory / "meta.json").read_text())["sizes"][split])

    def arrays(self) -> dict[str, np.ndarray]:
        """The split's memory-mapped arrays, opened on first use (so in the worker that uses them)."""
        if self._arrays is None:
            self._arrays = {f: np.load(self.directory / f"{self.split}_{f}.npy", mmap_mode="r") for f in FIELDS}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_arrays": None}  # workers reopen the maps instead of receiving copies

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        _, index = split_key(key)
        return {f: torch.from_numpy(np.array(a[index])) for f, a in self.arrays().items()}

    def get_batch(self, indices: np.ndarray, epoch: int | None = None) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """The samples at `indices` as one batch (one gather per field instead of a per-sample collate)."""
        return {f: torch.from_numpy(a[np.asarray(indices)]) for f, a in self.arrays().items()}


@dataclass
class PreparedTable:
    """The prepared-dataset side of the seam for an index-encoded table."""

    task: str
    num_outputs: int
    class_names: list[str]
    fingerprint: str
    directory: Path
    meta: dict[str, Any]

    def split(self, name: str) -> TableSplit:
        return TableSplit(self.directory, name)

    def spec(self) -> Spec:
        """Input name -> shape and dtype; `cardinalities` sizes the tabular model's embeddings."""
        prep = self.meta["preprocessing"]
        return {
            "numeric": FieldSpec((len(prep["feature_names"]),), "float32"),
            "categorical": FieldSpec((len(prep["cardinalities"]),), "int64", cardinalities=tuple(prep["cardinalities"])),
        }

    def preprocessing(self) -> dict[str, Any]:
        """What predict/export need: the table encoding (JSON), the numeric normalisation, the classes."""
        return dict(self.meta["preprocessing"])


def prepare_index_table(config: Config) -> PreparedTable:
    """Prepare (or reopen from the cache) a csv/parquet source with `data.categorical_encoding: index`."""
    from taktstock.data.tables import TableEncoder, load_table, report_unknown, table_fingerprint

    if config.data.categorical_encoding != "index":
        raise ConfigError("data.categorical_encoding: prepare_index_table is for 'index'")
    fp = fingerprint(config, table_fingerprint(config))
    directory = Path(config.data.cache_dir) / f"{config.data.source}-index-{fp}"
    if (directory / "meta.json").is_file():
        return _open(directory, fp)
    loaded = load_table(config)
    parts = _split_indices(config, loaded.y)
    encoder = TableEncoder.fit(loaded.table, loaded.kinds, config, parts["train"])
    encoded = encoder.transform(loaded.table, ConfigError)
    report_unknown(encoded.unknown, "val/test rows")
    norm = Normalizer.fit(encoded.features[parts["train"]], config.data.normalize)
    if config.task == "classification":
        num_outputs = 1 if config.loss.name == "bce_with_logits" else len(loaded.class_names)
    else:
        num_outputs = 1
    preprocessing = {
        "table": encoder.state(),
        "normalizer": norm.to_dict(),
        "input_shape": [encoded.features.shape[1]],
        "cardinalities": encoder.cardinalities(),
        "num_outputs": num_outputs,
        "class_names": loaded.class_names,
        "feature_names": encoder.output_names(),
    }
    prepared = PreparedTable(config.task, num_outputs, loaded.class_names, fp, directory, {"preprocessing": preprocessing})
    preprocessing["spec"] = {k: v.to_dict() for k, v in prepared.spec().items()}
    # Written to a temporary directory and renamed: parallel preparers race harmlessly, a crash leaves no half cache.
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for s in SPLITS:
        rows = parts[s]
        arrays = {
            "numeric": norm.apply(encoded.features[rows], inplace=True),
            "categorical": encoded.categories[rows],
            "labels": loaded.y[rows],
        }
        for f in FIELDS:
            np.save(tmp / f"{s}_{f}.npy", np.ascontiguousarray(arrays[f]), allow_pickle=False)
        sizes[s] = len(rows)
    meta = {"fingerprint": fp, "task": config.task, "sizes": sizes, "preprocessing": preprocessing}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        tmp.rename(directory)
    except OSError:  # another process finished first: use its (identical) files
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(directory, fp)


def _open(directory: Path, fp: str) -> PreparedTable:
    meta = json.loads((directory / "meta.json").read_text())
    prep = meta["preprocessing"]
    return PreparedTable(meta["task"], prep["num_outputs"], prep["class_names"], fp, directory, meta)
