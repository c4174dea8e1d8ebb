"""Array sources: bundled scikit-learn sets, CSV, NPZ, synthetic, and user functions by import path.

An array source returns the full, unsplit data as arrays plus a fingerprint of its content, so the
prepared cache is invalidated exactly when the source changes. (User `Dataset` classes are used
lazily instead, see `data/user_dataset.py`; other sources plug in with `@register_dataset`.)
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taktstock.config.schema import Config
from taktstock.errors import ConfigError
from taktstock.registry import SOURCES
from taktstock.utils.imports import import_object, is_import_path


@dataclass
class RawData:
    """Unsplit arrays: x is (N, *sample_shape) float32; y is (N,) int64 class ids or float32 targets."""

    x: np.ndarray
    y: np.ndarray
    fingerprint: str
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    # Tables: x is empty until prepare calls encode(train_rows), which fits the encoding on those rows only and
    # returns (x, the encoding's JSON state for preprocessing.json).
    encode: Callable[[np.ndarray], tuple[np.ndarray, dict[str, Any]]] | None = None


_SOURCES = SOURCES  # the registry config validation asks; entries are loader functions
# Sources whose fingerprint is known without loading the data (lets a prepared-cache hit skip the load
# and, for the scikit-learn sets, the ~1 s import of scikit-learn).
_CHEAP_FINGERPRINTS: dict[str, Callable[[Config], str]] = {}


def register_source(name: str) -> Callable[[Callable[[Config], RawData]], Callable[[Config], RawData]]:
    """Decorator: make a loader function available as `data.source: <name>`."""

    def decorate(fn: Callable[[Config], RawData]) -> Callable[[Config], RawData]:
        return _SOURCES.register(name, fn)

    return decorate


def check_source_name(name: str) -> None:
    """Raise `ConfigError` for a source that is neither registered nor an import path."""
    from taktstock.data.dataset import dataset_source, registered_datasets

    if not is_import_path(name) and _SOURCES.find(name) is None and dataset_source(name) is None:
        known = sorted({*_SOURCES.names(), *registered_datasets()})
        raise ConfigError(
            f"data.source: unknown source '{name}' (choose from {', '.join(known)} or use 'module:Class'; "
            "a source registered with @register_source or @register_dataset needs its module listed under plugins)"
        )


def load_source(config: Config) -> RawData:
    name = config.data.source
    check_source_name(name)
    if is_import_path(name):
        return _user_source(config)
    return _SOURCES.get(name).obj(config)


def cheap_fingerprint(config: Config) -> str | None:
    """The source fingerprint `load_source` would report, when it is known without loading; else None."""
    fn = _CHEAP_FINGERPRINTS.get(config.data.source)
    return fn(config) if fn is not None else None


def _sklearn(name: str, loader: str, images: bool = False) -> None:
    def load(config: Config) -> RawData:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        x = (bunch.images[:, None, :, :] if images else bunch.data).astype(np.float32)
        regression = config.task == "regression"
        y = bunch.target.astype(np.float32 if regression else np.int64)
        classes = [] if regression else [str(c) for c in getattr(bunch, "target_names", sorted(set(bunch.target)))]
        return RawData(x, y, fingerprint=f"sklearn:{loader}", class_names=classes, feature_names=list(getattr(bunch, "feature_names", [])))

    register_source(name)(load)
    _CHEAP_FINGERPRINTS[name] = lambda config: f"sklearn:{loader}"


_sklearn("digits", "load_digits", images=True)
_sklearn("wine", "load_wine")
_sklearn("breast_cancer", "load_breast_cancer")
_sklearn("iris", "load_iris")
_sklearn("diabetes", "load_diabetes")


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _require_file(config: Config) -> Path:
    if not config.data.path:
        raise ConfigError(f"data.path: required for data.source={config.data.source}")
    path = Path(config.data.path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative paths are read from the working directory, {Path.cwd()})"
        raise ConfigError(f"data.path: file not found: {path}{where}")
    return path


@register_source("csv")
@register_source("parquet")
def load_table_source(config: Config) -> RawData:
    """A table (CSV, TSV, .gz, Parquet): typed columns encoded by `data.tables`, fitted on the training split in prepare.
    (With `data.categorical_encoding: index`, `prepare` uses `data.table_dataset` instead.)"""
    from taktstock.data.tables import load_table, table_encoder_fn, table_fingerprint

    loaded = load_table(config)
    return RawData(
        np.empty((len(loaded.y), 0), np.float32),
        loaded.y,
        fingerprint=table_fingerprint(config),
        class_names=loaded.class_names,
        encode=table_encoder_fn(loaded, config),
    )


def _table_fingerprint(config: Config) -> str:
    from taktstock.data.tables import table_fingerprint

    return table_fingerprint(config)


_CHEAP_FINGERPRINTS["csv"] = _CHEAP_FINGERPRINTS["parquet"] = _table_fingerprint


def _targets(values: list[str] | np.ndarray, config: Config) -> tuple[np.ndarray, list[str]]:
    if config.task == "regression":
        try:
            return np.asarray(values, dtype=np.float32), []
        except ValueError:
            raise ConfigError(f"data.target: non-numeric target values for a regression loss ({config.loss.name})") from None
    classes = sorted({str(v) for v in values}, key=lambda s: (not _is_number(s), float(s) if _is_number(s) else 0.0, s))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), classes


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@register_source("npz")
def load_npz(config: Config) -> RawData:
    """Arrays 'x' (or 'X') and 'y' (or data.target) in a .npz file."""
    path = _require_file(config)
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data.path: cannot read {path} as .npz ({exc})") from None
    xkey = next((k for k in ("x", "X") if k in arrays), None)
    ykey = config.data.target or "y"
    if xkey is None or ykey not in arrays:
        raise ConfigError(f"data.path: {path} must contain arrays 'x' and '{ykey}' (has {', '.join(arrays.files)})")
    x = arrays[xkey].astype(np.float32)
    y_raw = arrays[ykey]
    if y_raw.ndim == 2 and y_raw.shape[1] == 1:  # a column vector of targets
        y_raw = y_raw[:, 0]
    if len(y_raw) != len(x):
        raise ConfigError(f"data.path: {path} has {len(x)} inputs but {len(y_raw)} targets")
    if config.task == "regression":
        y, classes = y_raw.astype(np.float32), []
    elif y_raw.ndim != 1:
        raise ConfigError(f"data.target: class labels must be one per sample; '{ykey}' in {path} has shape {y_raw.shape}")
    else:
        y, classes = _targets(y_raw.tolist(), config)
    return RawData(x, y, fingerprint=f"npz:{_file_hash(path)}:{ykey}", class_names=classes)


@register_source("synthetic")
def load_synthetic(config: Config) -> RawData:
    """Deterministic random data: kwargs n_samples, n_features, n_classes (0 = regression), shape."""
    kw = _synthetic_kwargs(config)
    rng = np.random.default_rng(config.seed)
    n, f = int(kw["n_samples"]), int(kw["n_features"])
    shape = tuple(kw["shape"]) if kw["shape"] else (f,)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    w = rng.standard_normal((int(np.prod(shape)), max(int(kw["n_classes"]), 1))).astype(np.float32)
    logits = x.reshape(n, -1) @ w
    if config.task == "regression" or int(kw["n_classes"]) == 0:
        y = logits[:, 0].astype(np.float32)
        classes: list[str] = []
    else:
        y = logits.argmax(1).astype(np.int64)
        classes = [str(i) for i in range(int(kw["n_classes"]))]
    return RawData(x, y, fingerprint=_synthetic_fingerprint(config), class_names=classes)


def _synthetic_kwargs(config: Config) -> dict[str, Any]:
    kw = {"n_samples": 2048, "n_features": 64, "n_classes": 10, "shape": None} | config.data.kwargs
    unknown = set(kw) - {"n_samples", "n_features", "n_classes", "shape"}
    if unknown:
        raise ConfigError(f"data.kwargs: unknown synthetic option(s) {sorted(unknown)}")
    return kw


def _synthetic_fingerprint(config: Config) -> str:
    return f"synthetic:{json.dumps(_synthetic_kwargs(config), sort_keys=True)}:{config.seed}"


_CHEAP_FINGERPRINTS["synthetic"] = _synthetic_fingerprint


def accepts_split(obj: Any) -> bool:
    """Whether a user class or factory takes a `split` argument by name (then it is built once per split)."""
    try:
        param = inspect.signature(obj).parameters.get("split")
    except (TypeError, ValueError):  # builtins and C extensions without a signature
        return False
    return param is not None and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def construct_user_source(config: Config, split: str | None = None) -> tuple[Any, Any]:
    """(imported object, what calling it with data.kwargs produced) for `data.source: module:Name`.

    With `split` ("train", "val", "test") and an object that takes a `split` argument, it is passed too."""
    obj = import_object(config.data.source, "data.source")
    kwargs = dict(config.data.kwargs)
    if split is not None and accepts_split(obj):
        if "split" in kwargs:
            raise ConfigError(f"data.kwargs.split: {config.data.source} takes `split`, which taktstock passes itself; remove the key")
        kwargs["split"] = split
    try:
        produced: Any = obj(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"data.kwargs: cannot construct {config.data.source} ({exc})") from None
    return obj, produced


def source_code_hash(obj: Any) -> str:
    """SHA-256 of a user source's code (edited code must not reuse a stale cache)."""
    try:
        code = inspect.getsource(obj)
    except (OSError, TypeError):
        code = ""
    return hashlib.sha256(code.encode()).hexdigest()


def _user_source(config: Config) -> RawData:
    """A user function by import path that returns (x, y) arrays (Dataset classes: `data/user_dataset.py`)."""
    obj, produced = construct_user_source(config)
    return user_arrays(config, obj, produced)


def user_arrays(config: Config, obj: Any, produced: Any) -> RawData:
    """The RawData of a user function's (x, y) arrays."""
    if not (isinstance(produced, tuple) and len(produced) == 2):
        raise ConfigError(f"data.source: {config.data.source} must be a Dataset (len + indexing) or return (x, y) arrays")
    x, y = (np.asarray(a) for a in produced)
    fingerprint_fn = getattr(produced, "fingerprint", None)
    if callable(fingerprint_fn):
        extra = str(fingerprint_fn())
    else:  # content hash of inputs and targets: relabelled data must not reuse a stale cache
        h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
        extra = h.hexdigest()
    fp = f"user:{config.data.source}:{json.dumps(config.data.kwargs, sort_keys=True, default=str)}:{source_code_hash(obj)}:{extra}"
    if config.task == "regression":
        return RawData(x.astype(np.float32), y.astype(np.float32), fp)
    y_ids, found = _targets(y.tolist(), config)
    return RawData(x.astype(np.float32), y_ids, fp, class_names=found)


# Built-in sources that prepare themselves (`@register_dataset`): registered when the registry loads this module.
# The built-in prepared-dataset sources register here too, so one provider module lists every name
# config validation accepts (the import is light: the image code loads when a source is prepared).
import taktstock.data.images.source  # noqa: E402, F401
from taktstock.data.mds import dataset as _mds_source  # noqa: E402, F401
from taktstock.data.text import prepared as _text_sources  # noqa: E402, F401
