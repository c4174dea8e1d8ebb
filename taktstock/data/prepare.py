"""`prepare(config)`: the prepared dataset of a config, whatever its source (see `data/dataset.py`).

Array sources (scikit-learn sets, CSV, NPZ, synthetic, `@register_source` functions) are split and
normalised here (fitted on train only) and cached as one file; `PreparedData` is their
`PreparedDataset`. The cache key is a fingerprint of the source content and every setting that
changes the result, so editing a training hyperparameter never re-prepares and editing a
preprocessing one always does. Sources registered with `@register_dataset` and user `Dataset`
classes by import path prepare themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taktstock.config.schema import AugmentConfig, Config
from taktstock.data.dataset import FieldSpec, PreparedDataset, Spec, dataset_source
from taktstock.data.datasets import ArraySplit
from taktstock.data.sources import cheap_fingerprint, load_source
from taktstock.errors import ConfigError
from taktstock.utils.imports import is_import_path

PREP_VERSION = 2  # bump when the split or normalisation algorithm changes: invalidates caches
SPLITS = ("train", "val", "test")
TABLE_SOURCES = ("csv", "parquet")  # data/tables.py; index encoding prepares them as dict samples


@dataclass
class Normalizer:
    """Affine per-feature transform (x - shift) / scale, fitted on the training split."""

    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: str, chunk_rows: int = 1 << 16) -> Normalizer:
        """Fit on `x` (training rows). Per-feature statistics are accumulated in float64 over row chunks, so
        memory stays at one chunk however large the split; the sums run row by row in the same order as
        numpy's axis-0 reduction of the whole array, so the result is bit-identical to it."""
        shape = x.shape[1:]
        if kind == "none" or len(x) == 0:
            return cls(np.zeros(shape, np.float32), np.ones(shape, np.float32))
        flat = x.reshape(len(x), -1)
        if kind == "minmax":  # exact in float32: a cast to float64 preserves the order of the values
            lo, hi = flat.min(0).astype(np.float64), flat.max(0).astype(np.float64)
            shift, scale = lo, hi - lo
        elif kind == "global" or flat.shape[1] == 1:
            # One pairwise sum over all values (not row-ordered): only the whole float64 copy reproduces it.
            x64 = flat.astype(np.float64)  # float32 sums drift on large splits
            if kind == "global":
                shift, scale = np.full(flat.shape[1], x64.mean()), np.full(flat.shape[1], x64.std())
            else:
                shift, scale = x64.mean(0), x64.std(0)
        else:  # standard: numpy's std is sqrt(mean((x - mean) ** 2)), two passes
            n = len(flat)
            shift = _row_sum(flat, chunk_rows, lambda c: c) / n
            scale = np.sqrt(_row_sum(flat, chunk_rows, lambda c: _squared_deviation(c, shift)) / n)
        # Constant features (e.g. blank image corners) would divide by zero.
        scale = np.where(scale > 1e-8, scale, 1.0)
        return cls(shift.reshape(shape).astype(np.float32), scale.reshape(shape).astype(np.float32))

    def apply(self, x: np.ndarray, inplace: bool = False) -> np.ndarray:
        """(x - shift) / scale as float32; `inplace` overwrites a float32 `x` (no temporaries, same values)."""
        if inplace and x.dtype == np.float32:
            np.subtract(x, self.shift, out=x)
            return np.divide(x, self.scale, out=x)
        return ((x - self.shift) / self.scale).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        return cls(np.asarray(d["shift"], np.float32), np.asarray(d["scale"], np.float32))


@dataclass
class PreparedData:
    """The in-memory `PreparedDataset`: split, normalised arrays and what predict needs for new data."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    normalizer: Normalizer
    num_outputs: int
    class_names: list[str]
    feature_names: list[str]
    fingerprint: str
    path: Path
    task: str = "classification"
    seed: int = 0
    augment: AugmentConfig | None = None  # training-split augmentation (not part of the cache)
    table: dict[str, Any] | None = None  # a table source's fitted encoding (data/tables.py), as JSON

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.arrays["train"][0].shape[1:])

    def split(self, name: str) -> ArraySplit:
        x, y = self.arrays[name]
        return ArraySplit(x, y, self.seed, self.augment if name == "train" else None)

    def spec(self) -> Spec:
        return {"inputs": FieldSpec(self.input_shape, "float32")}

    def nbytes(self) -> int:
        return sum(x.nbytes + y.nbytes for x, y in self.arrays.values())

    def preprocessing(self) -> dict[str, Any]:
        """What predict needs to apply the training-time preprocessing to new inputs."""
        return normalized_preprocessing(self) | ({"table": self.table} if self.table is not None else {})


def normalized_preprocessing(data: Any, **extra: Any) -> dict[str, Any]:
    """The preprocessing state of a dataset whose inputs are normalised features (`data.normalize`): the
    normaliser, shapes, outputs and names predict and export read. `extra` keys go before `spec`, so the
    JSON a run directory holds keeps its key order."""
    return {
        "normalizer": data.normalizer.to_dict(),
        "input_shape": list(data.input_shape),
        "num_outputs": data.num_outputs,
        "class_names": data.class_names,
        "feature_names": data.feature_names,
        **extra,
        "spec": {k: v.to_dict() for k, v in data.spec().items()},
    }


def _row_sum(x: np.ndarray, chunk_rows: int, term: Any) -> np.ndarray:
    """Column sums of `term(float64 rows)`, added row after row across chunks: the running total is the first
    row of each chunk's reduction, which keeps numpy's sequential axis-0 order (and so its exact result)."""
    total = np.zeros(x.shape[1], np.float64)
    for start in range(0, len(x), chunk_rows):
        rows = term(x[start : start + chunk_rows].astype(np.float64))
        total = np.concatenate([total[None], rows]).sum(0)
    return total


def _squared_deviation(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(rows - mean) ** 2 in place on a float64 chunk, with the ufuncs numpy's std uses."""
    np.subtract(rows, mean, out=rows)
    return np.multiply(rows, rows, out=rows)


def split_settings(config: Config, stratify: bool = True) -> dict[str, Any]:
    """The settings that decide which sample lands in which split (`_split_indices`), as every prepared
    cache's key names them; `stratify=False` for sources whose split ignores `data.stratify`."""
    d = config.data
    settings = {"seed": config.seed, "val": d.val_fraction, "test": d.test_fraction}
    return settings | {"stratify": d.stratify} if stratify else settings


def fingerprint(config: Config, source_fp: str) -> str:
    """Cache key of prepared arrays: the source's content fingerprint and the settings that change the arrays."""
    settings = {
        "version": PREP_VERSION,
        "source": source_fp,
        "task": config.task,
        **split_settings(config),
        "normalize": config.data.normalize,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prepare(config: Config, verbose: bool = False) -> PreparedDataset:
    """The prepared dataset of `config`: a registered dataset source, a user Dataset class, or cached arrays."""
    builder = dataset_source(config.data.source)
    if builder is not None:
        return builder(config)
    if config.data.source in TABLE_SOURCES and config.data.categorical_encoding == "index":
        from taktstock.data.table_dataset import prepare_index_table

        return prepare_index_table(config)
    if is_import_path(config.data.source):
        from taktstock.data.user_dataset import prepare_user_source

        return prepare_user_source(config, verbose=verbose)
    return prepare_arrays(config, verbose=verbose)


def prepare_arrays(config: Config, verbose: bool = False, raw: Any = None) -> PreparedData:
    """Array sources: the prepared splits, computed and cached only when the fingerprint is new."""
    data = _prepare_arrays(config, verbose, raw)
    data.task, data.seed, data.augment = config.task, config.seed, config.data.augment
    return data


def _prepare_arrays(config: Config, verbose: bool, raw: Any) -> PreparedData:
    source_fp = raw.fingerprint if raw is not None else cheap_fingerprint(config)
    if source_fp is None:
        raw = load_source(config)
        source_fp = raw.fingerprint
    fp = fingerprint(config, source_fp)
    slug = config.data.source.replace(":", "_").replace(".", "_").replace("/", "_")
    path = Path(config.data.cache_dir) / f"{slug}-{fp}.npz"
    if path.is_file():
        try:
            return _load(path, fp)
        except (OSError, ValueError, KeyError):
            pass  # A damaged cache is simply rebuilt.
    if raw is None:
        raw = load_source(config)
    if verbose:
        print(f"preparing {config.data.source} -> {path}")
    table = None
    if raw.encode is not None:  # a table: its encoding is fitted on the training rows only, so it follows the split
        raw.x, table = raw.encode(_split_indices(config, raw.y)["train"])
        raw.feature_names = table["outputs"]
    data = _build(config, raw, fp, path)
    data.table = table
    _save(data)
    return data


SPLIT_VERSION = 1


def _stratified(config: Config) -> bool:
    return config.task == "classification" and config.data.stratify


def _split_sizes(config: Config, n: int) -> tuple[int, int]:
    """(validation, test) sizes. Integers, rounded up like scikit-learn: 0.2 + 0.1 is 0.30000000000000004 in
    floating point, so passing the summed fraction would move a sample from train to the test split."""
    return math.ceil(round(n * config.data.val_fraction, 6)), math.ceil(round(n * config.data.test_fraction, 6))


def memoised_split(config: Config, y: np.ndarray) -> dict[str, np.ndarray]:
    """`_split_indices`, memoised in `data.cache_dir/splits/` by the labels and the split settings.

    For sources whose items are not cached (user Dataset classes, read lazily), which would otherwise be split
    again by every train, evaluate and predict: the memo spares them scikit-learn's import (~2 s). Cached
    sources store their split with their arrays and call `_split_indices` only when they build the cache."""
    if sum(_split_sizes(config, len(y))) == 0:
        return _split_indices(config, y)  # everything is train: nothing to compute
    labels = np.ascontiguousarray(y)
    settings = {"version": SPLIT_VERSION, **split_settings(config), "stratified": _stratified(config)}
    head = json.dumps(settings | {"n": len(y), "dtype": str(labels.dtype)})
    key = hashlib.sha256(head.encode() + labels.tobytes()).hexdigest()[:20]
    path = Path(config.data.cache_dir) / "splits" / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            parts = {s: f[s] for s in SPLITS}
        if sum(len(v) for v in parts.values()) == len(y) and all(v.dtype.kind == "i" for v in parts.values()):
            return parts
    except (OSError, ValueError, KeyError):
        pass  # absent or damaged: split again
    parts = _split_indices(config, y)
    try:
        import io

        from taktstock.utils.atomic import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, **parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache directory: the split is recomputed next time
    return parts


def _split_indices(config: Config, y: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(y)
    idx = np.arange(n)
    d = config.data
    strat = _stratified(config)
    n_val, n_test = _split_sizes(config, n)
    if n_val + n_test == 0:
        return {"train": idx, "val": idx[:0], "test": idx[:0]}
    try:
        train, rest = train_test_split(idx, test_size=n_val + n_test, random_state=config.seed, stratify=y if strat else None)
        if n_test == 0:
            return {"train": np.sort(train), "val": np.sort(rest), "test": idx[:0]}
        if n_val == 0:
            return {"train": np.sort(train), "val": idx[:0], "test": np.sort(rest)}
        val, test = train_test_split(rest, test_size=n_test, random_state=config.seed, stratify=y[rest] if strat else None)
    except ValueError as exc:
        reason, hint = str(exc).split(". ")[0], ""
        if strat:
            hint = "; if the target is a number to predict, use a regression loss (loss.name: mse); else set data.stratify: false"
        raise ConfigError(
            f"data: cannot split {n} samples with val_fraction={d.val_fraction}, test_fraction={d.test_fraction} ({reason}){hint}"
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _build(config: Config, raw: Any, fp: str, path: Path) -> PreparedData:
    """Split and normalise `raw` (a `RawData`). A table's encoded matrix is released once split (the splits are
    copies), so prepare holds it once, not twice; other sources' arrays may still be in use by their caller."""
    x, y, classes, features = raw.x, raw.y, raw.class_names, raw.feature_names
    if raw.encode is not None:
        raw.x = None
    if len(x) != len(y):
        raise ConfigError(f"data: {len(x)} inputs but {len(y)} targets")
    # NaN/Inf inputs would surface much later as a "non-finite loss" that blames the learning rate.
    for what, arr in (("inputs", x), ("targets", y)):
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1) if np.issubdtype(arr.dtype, np.floating) else np.zeros(len(arr), bool)
        if bad.any():
            rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
            raise ConfigError(f"data.source: {int(bad.sum())} samples of {config.data.source} have NaN/Inf {what} (rows {rows}...)")
    parts = _split_indices(config, y)
    # Each split is a fresh copy (fancy indexing), so the normalisation is applied to it in place.
    arrays = {s: (x[parts[s]], y[parts[s]]) for s in SPLITS}
    del x
    norm = Normalizer.fit(arrays["train"][0], config.data.normalize)
    arrays = {s: (norm.apply(sx, inplace=True), sy) for s, (sx, sy) in arrays.items()}
    if config.task == "classification":
        num_outputs = int(y.max()) + 1 if len(y) else 0
        if config.loss.name == "bce_with_logits":
            num_outputs = 1
        classes = classes or [str(i) for i in range(num_outputs)]
    else:
        num_outputs = 1
    return PreparedData(arrays, norm, num_outputs, classes, features, fp, path)


def _save(data: PreparedData) -> None:
    data.path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, np.ndarray] = {}
    for s, (x, y) in data.arrays.items():
        payload[f"{s}_x"], payload[f"{s}_y"] = x, y
    meta = {k: v for k, v in data.preprocessing().items()} | {"fingerprint": data.fingerprint}
    payload["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = data.path.with_name(f".{data.path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **payload)
    os.replace(tmp, data.path)  # Concurrent preparers (parallel trials) race harmlessly.


def _load(path: Path, fp: str) -> PreparedData:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        if meta["fingerprint"] != fp:
            raise ValueError("fingerprint mismatch")
        arrays = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in SPLITS}
    return PreparedData(
        arrays,
        Normalizer.from_dict(meta["normalizer"]),
        meta["num_outputs"],
        meta["class_names"],
        meta["feature_names"],
        fp,
        path,
        table=meta.get("table"),
    )
