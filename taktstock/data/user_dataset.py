"""A user `Dataset` class by import path (`data.source: module:Class`), used lazily.

Items are read by index in the DataLoader workers, never all at once in the main process. At
prepare time the main process reads one item (the sample spec) and, only when needed, the labels
(for the split, unless the dataset has a `targets` sequence as torchvision datasets do) and a
bounded sample of training inputs (to fit `data.normalize`). Items are `(inputs, target)` pairs or
dicts with the target under `"labels"`; nested structures such as `({"image": ..., "meta": ...}, y)`
work. Each training read runs with torch's, Python's and NumPy's global generators seeded by
(seed, epoch, index), so random transforms inside the dataset give the same sample with any
number of workers and after a resume; evaluation reads use a seed of (seed, index). The built-in
`data.augment` applies to the float inputs of `(inputs, target)` items of the training split.

A class whose constructor takes `split` is built once per split ("train", "val", "test") so it can
keep its own augmentation out of evaluation; `data.split_by` says whether taktstock splits the
(identical) items of those objects by fraction or uses each object whole as its split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from taktstock.config.schema import AugmentConfig, Config
from taktstock.data.augment import augment_batch, is_active
from taktstock.data.dataset import (
    EVAL_STREAM,
    SPLITS,
    Collated,
    Key,
    Spec,
    SplitDataset,
    sample_seeds,
    spec_of_sample,
    to_tensor,
)
from taktstock.data.global_rng import SeededReads
from taktstock.errors import ConfigError

NORMALIZE_SAMPLES = 10_000  # training items read to fit data.normalize (all of them in smaller sets)
READ_CHUNK = 256  # items per batched read when taktstock reads a whole dataset itself (labels, normalisation)
ROWS_HOOK = "arrays"  # a dataset method: (inputs, targets) arrays whose rows are its items


class UserSplit(SplitDataset):
    """One split of a user dataset: a subset of its indices, converted to tensors, normalised, labels mapped.

    Reads are batched: the DataLoader's fetcher calls `__getitems__` with a batch of keys, the items are read
    under `SeededReads` (global generators seeded per sample, at a per-batch cost) and stacked into one batch
    directly, the normalisation, `data.augment` and label mapping applied to the whole batch. A dataset with
    its own `__getitems__` is read a batch at a time; one with `arrays()` is indexed without item reads.
    `main_batches` adds `get_batch` (the loop reads batches in the main process, without a DataLoader)."""

    def __init__(
        self,
        dataset: Any,
        indices: np.ndarray,
        seed: int,
        source: str,
        normalizer: tuple[torch.Tensor, torch.Tensor] | None = None,
        label_index: dict[str, int] | None = None,
        augment: AugmentConfig | None = None,
        rows: tuple[torch.Tensor, torch.Tensor] | None = None,
        main_batches: bool = False,
    ) -> None:
        self.dataset, self.indices, self.seed, self.source = dataset, np.asarray(indices, dtype=np.int64), seed, source
        self.normalizer, self.label_index = normalizer, label_index
        self.augment = augment if augment is not None and is_active(augment) else None
        self.rows = rows  # the dataset's `arrays()`: item j is (rows[0][j], rows[1][j])
        self.reads = SeededReads(dataset)
        getitems = getattr(dataset, "__getitems__", None)
        self._getitems = getitems if callable(getitems) else None
        if main_batches:
            self.get_batch = self.get_batch_of

    def __len__(self) -> int:
        return len(self.indices)

    # -- reading -------------------------------------------------------------------------------------------

    def _raw(self, positions: np.ndarray, epoch: int | None) -> Any:
        """The dataset's items at split `positions`: a list of items, or a batch its `__getitems__` built."""
        js = self.indices[positions]
        dataset = self.dataset

        def seeds() -> list[int]:
            return sample_seeds(self.seed, 0, js, EVAL_STREAM) if epoch is None else sample_seeds(self.seed, epoch, js)

        def fetch() -> Any:
            if self._getitems is not None:
                return self._getitems(js.tolist())
            return [dataset[j] for j in js.tolist()]

        return self.reads.read(fetch, seeds, lambda k: dataset[int(js[k])])

    def _batch(self, positions: np.ndarray, epoch: int | None) -> Any:
        """One assembled batch of split `positions`."""
        if self.rows is not None:
            js = torch.from_numpy(self.indices[positions])
            x, y = torch.index_select(self.rows[0], 0, js), torch.index_select(self.rows[1], 0, js)
            return self._finish(x, y, positions, epoch)
        raw = self._raw(positions, epoch)
        if not isinstance(raw, list):  # the dataset's own __getitems__ built the batch
            return self._from_batch(raw, positions, epoch)
        stacked = _stack_pairs(raw)
        if stacked is not None:
            return self._finish(stacked[0], stacked[1], positions, epoch)
        fields = _stack_dicts(raw)
        if fields is not None:
            return fields | {"labels": self._labels(fields["labels"])}
        return default_collate([self._convert(item, int(p), epoch) for item, p in zip(raw, positions.tolist(), strict=True)])

    def _finish(self, x: Any, y: Any, positions: np.ndarray, epoch: int | None) -> tuple[Any, Any]:
        """Normalisation, data.augment and label mapping of a stacked (inputs, targets) batch."""
        if self.normalizer is not None:
            shift, scale = self.normalizer
            x = (x - shift) / scale
        if self.augment is not None and epoch is not None and isinstance(x, torch.Tensor):
            x = augment_batch(x, positions, epoch, self.seed, self.augment)  # keyed by split position
        return x, self._labels(y)

    def _from_batch(self, batch: Any, positions: np.ndarray, epoch: int | None) -> Any:
        if isinstance(batch, dict):
            return self._check_batch(check_item(batch, self.source), len(positions))
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = (_as_batch(v) for v in batch)
            self._check_batch((x, y), len(positions))
            return self._finish(x, y, positions, epoch)
        raise ConfigError(
            f"data.source: {self.source}.__getitems__ must return a list of items or a batch ((inputs, targets) or a dict "
            f"with 'labels'), got {type(batch).__name__}"
        )

    def _check_batch(self, batch: Any, n: int) -> Any:
        values = batch.values() if isinstance(batch, dict) else batch
        for v in values:
            if isinstance(v, torch.Tensor) and (v.ndim == 0 or len(v) != n):
                raise ConfigError(
                    f"data.source: {self.source}.__getitems__ returned a batch of {len(v) if v.ndim else 0} rows for {n} indices"
                )
        if isinstance(batch, dict):
            return batch | {"labels": self._labels(batch["labels"])}
        return batch

    def _labels(self, y: Any) -> Any:
        if self.label_index is None:
            return y
        values = y if isinstance(y, list) else (y.tolist() if isinstance(y, (torch.Tensor, np.ndarray)) else list(y))
        return torch.tensor([self.label_index[_label_key(v)] for v in values], dtype=torch.int64)

    # -- the SplitDataset interface ------------------------------------------------------------------------

    def __getitem__(self, key: Key) -> Any:
        return self.samples([key])[0]

    def samples(self, keys: Sequence[Key]) -> list[Any]:
        """Converted samples (not batched) for `keys`, read as a batch."""
        epoch, positions = _decode(keys)
        if self.rows is not None:
            x, y = self._batch(positions, epoch)
            return list(zip(x, y, strict=True))
        raw = self._raw(positions, epoch)
        if not isinstance(raw, list):
            batch = self._from_batch(raw, positions, epoch)
            return [_row(batch, k) for k in range(len(positions))]
        return [self._convert(item, int(p), epoch) for item, p in zip(raw, positions.tolist(), strict=True)]

    def __getitems__(self, keys: list[Key]) -> Collated:
        epoch, positions = _decode(keys)
        return Collated(self._batch(positions, epoch))

    def get_batch_of(self, indices: np.ndarray, epoch: int | None) -> Any:
        """The batch of split positions `indices` (training keys with an epoch, evaluation keys with None)."""
        return self._batch(np.asarray(indices, dtype=np.int64), epoch)

    def _convert(self, item: Any, position: int, epoch: int | None) -> Any:
        """One raw item -> a tensor sample: `(inputs, target)` or a dict with `labels`."""
        sample = check_item(item, self.source)
        if isinstance(sample, tuple):
            inputs, target = sample
            if self.normalizer is not None:
                shift, scale = self.normalizer
                inputs = (inputs - shift) / scale
            if self.augment is not None and epoch is not None and isinstance(inputs, torch.Tensor):
                inputs = augment_batch(inputs[None], np.array([position]), epoch, self.seed, self.augment)[0]
            return inputs, self._label(target)
        return sample | {"labels": self._label(sample["labels"])}

    def _label(self, target: Any) -> Any:
        if self.label_index is None:
            return target
        return torch.tensor(self.label_index[_label_key(target)], dtype=torch.int64)


def _decode(keys: Sequence[Key]) -> tuple[int | None, np.ndarray]:
    """(epoch, split positions) of a batch of keys: `(epoch, index)` tuples when training, ints when evaluating."""
    first = keys[0]
    if isinstance(first, tuple):
        return int(first[0]), np.fromiter((k[1] for k in keys), dtype=np.int64, count=len(keys))
    return None, np.fromiter(keys, dtype=np.int64, count=len(keys))


def _row(batch: Any, k: int) -> Any:
    if isinstance(batch, dict):
        return {name: v[k] for name, v in batch.items()}
    return tuple(v[k] for v in batch)


def _tensor_dtype(t: torch.Tensor) -> torch.Tensor:
    """`to_tensor`'s dtype rule on a stacked batch: floats -> float32, other integers -> int64."""
    if t.is_floating_point():
        return t if t.dtype == torch.float32 else t.to(torch.float32)
    if t.dtype in (torch.uint8, torch.bool, torch.int64) or t.is_complex():
        return t
    return t.to(torch.int64)


def _as_batch(value: Any) -> Any:
    """A batch field from a dataset's `__getitems__`: tensors as `to_tensor` makes them; text labels stay a list."""
    if isinstance(value, (list, tuple)) and value and _is_text(value[0]):
        return list(value)
    return to_tensor(value) if not isinstance(value, torch.Tensor) else _tensor_dtype(value)


def _stack(values: list[Any]) -> torch.Tensor | None:
    """Per-item arrays, tensors or numbers of one type and shape -> one tensor, as stacking `to_tensor` of each
    would give; None when they are not uniform (the per-item path decides)."""
    first = values[0]
    kind = type(first)
    if any(type(v) is not kind for v in values):
        return None
    try:
        if kind is torch.Tensor:
            return _tensor_dtype(torch.stack(values))
        if kind is np.ndarray:
            return _tensor_dtype(torch.from_numpy(np.stack(values)))
        if kind in (int, float, bool) or issubclass(kind, np.generic):
            if issubclass(kind, (np.str_, np.bytes_)):
                return None
            return _tensor_dtype(torch.from_numpy(np.asarray(values)))
    except (RuntimeError, ValueError):  # shapes differ: the per-item path names the problem
        return None
    return None


def _stack_dicts(items: list[Any]) -> dict[str, Any] | None:
    """A list of dict items with the same fields (target under `labels`) -> one dict of stacked fields, or None."""
    first = items[0]
    if type(first) is not dict or "labels" not in first:
        return None
    keys = first.keys()
    if any(type(it) is not dict or it.keys() != keys for it in items):
        return None
    out: dict[str, Any] = {}
    for k in keys:
        values = [it[k] for it in items]
        if k == "labels" and _is_text(values[0]):
            if not all(_is_text(v) for v in values):
                return None
            out[k] = values
            continue
        stacked = _stack(values)
        if stacked is None:
            return None
        out[k] = stacked
    return out


def _stack_pairs(items: list[Any]) -> tuple[torch.Tensor, Any] | None:
    """A list of `(inputs, target)` items -> (stacked inputs, stacked targets or text labels), or None."""
    first = items[0]
    if type(first) not in (tuple, list) or len(first) != 2:
        return None
    kind = type(first)
    if any(type(it) is not kind or len(it) != 2 for it in items):
        return None
    x = _stack([it[0] for it in items])
    if x is None:
        return None
    targets = [it[1] for it in items]
    if _is_text(targets[0]):
        return (x, targets) if all(_is_text(t) for t in targets) else None
    y = _stack(targets)
    return None if y is None else (x, y)


def check_item(item: Any, source: str) -> Any:
    """The item converted to tensors, or a `ConfigError` naming what a sample must look like."""
    if isinstance(item, dict):
        if "labels" not in item:
            raise ConfigError(
                f"data.source: items of {source} are dicts without a 'labels' field (got {', '.join(map(str, item))}); "
                "put the target under 'labels' (see docs/custom-code.md)"
            )
        return {k: v if k == "labels" and _is_text(v) else to_tensor(v) for k, v in item.items()}
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return (to_tensor(item[0]), item[1] if _is_text(item[1]) else to_tensor(item[1]))
    raise ConfigError(
        f"data.source: items of {source} must be (inputs, target) pairs or dicts with a 'labels' field, got {type(item).__name__}"
    )


def _is_text(value: Any) -> bool:
    """A class name as the item gives it ("cat"): mapped to its class id by `UserSplit._label`, never a tensor."""
    return isinstance(value, (str, np.str_))


def _label_key(target: Any) -> str:
    if isinstance(target, (torch.Tensor, np.ndarray, np.generic)):
        target = target.item()
    return str(target)


class UserPrepared:
    """The `PreparedDataset` of a user Dataset: a deterministic split of its indices (items are not cached; the split indices are, see `memoised_split`).

    `datasets` maps each split to the object that serves it: one shared object, or one built per split
    for a class that takes `split`. With `given` (data.split_by: dataset) each split is the whole of
    its own object; otherwise the objects serve the same items and taktstock splits their indices."""

    def __init__(self, config: Config, datasets: dict[str, Any], fingerprint: str, given: bool = False) -> None:
        from taktstock.data.prepare import Normalizer, memoised_split
        from taktstock.data.sources import _targets

        src = config.data.source
        self.fingerprint, self.task, self.path = fingerprint, config.task, None
        train = self.dataset = datasets["train"]
        sizes = {s: len(d) for s, d in datasets.items()}
        if not given and len(set(sizes.values())) > 1:
            raise ConfigError(
                f"data.split_by: {src}(split=...) has {', '.join(f'{n} {s}' for s, n in sizes.items())} items, so it serves its "
                "own splits; set data.split_by: dataset (or give every split the same items for taktstock to split)"
            )
        if sizes["train"] == 0:
            raise ConfigError(f"data.source: {src} has no {'training ' if given else ''}items")
        order = [s for s in SPLITS if sizes[s]] if given else ["train"]  # the objects whose items are labelled
        probe = UserSplit(train, np.arange(sizes["train"]), config.seed, src).__getitem__(0)
        self._spec = spec_of_sample(probe)
        for s in order[1:]:  # every split must fit the model built from the training sample
            other = spec_of_sample(UserSplit(datasets[s], np.arange(sizes[s]), config.seed, src)[0])
            if other != self._spec:
                raise ConfigError(f"data.source: {src}(split={s!r}) items do not match its training items ({other} vs {self._spec})")
        n = sum(sizes[s] for s in order)
        labels = probe[1] if isinstance(probe, tuple) else probe["labels"]
        names = [str(c) for c in getattr(train, "classes", []) or []]
        label_index = None
        if _is_text(labels) and config.task != "classification":
            raise ConfigError(f"data.task: {src} gives text targets ({labels!r}), which only classification can use")
        if config.task == "classification" and np.ndim(labels) == 0:
            values = [v for s in order for v in _label_values(datasets[s], sizes[s], src, config.seed)]
            y, found = _targets(values, config)
            if _is_text(labels) or any(str(v) != str(i) for v, i in zip(values, y.tolist(), strict=True)):
                label_index = {str(v): int(i) for v, i in zip(values, y.tolist(), strict=True)}
            self.num_outputs = 1 if config.loss.name == "bce_with_logits" else int(y.max()) + 1
            self.class_names = names or found
        elif config.task == "classification":  # per-position labels (sequences): no stratified split
            y = np.zeros(n, np.int64)
            self.num_outputs = int(getattr(train, "num_outputs", 0) or len(names))
            if not self.num_outputs:
                raise ConfigError(f"data.source: {src} has per-position labels; give it a `classes` list or a `num_outputs` attribute")
            self.class_names = names or [str(i) for i in range(self.num_outputs)]
        else:
            y, self.num_outputs, self.class_names = np.zeros(n, np.float32), 1, []
        if np.ndim(labels) != 0:  # sequence or vector targets cannot be stratified
            config = config.model_copy(update={"data": config.data.model_copy(update={"stratify": False})})
        # Given splits are used whole, in the dataset's order; data.val_fraction/test_fraction do not apply.
        parts = {s: np.arange(sizes[s]) for s in SPLITS} if given else memoised_split(config, y)
        inputs = self._spec.get("inputs")
        norm_state = None
        if isinstance(probe, tuple) and inputs is not None and inputs.dtype == "float32" and config.data.normalize != "none":
            sample = parts["train"][np.linspace(0, len(parts["train"]) - 1, min(NORMALIZE_SAMPLES, len(parts["train"]))).astype(np.int64)]
            reader = UserSplit(train, sample, config.seed, src, label_index=label_index)
            chunks = [reader.samples(list(range(a, min(len(sample), a + READ_CHUNK)))) for a in range(0, len(sample), READ_CHUNK)]
            x = np.stack([s[0].numpy() for c in chunks for s in c]) if len(sample) else np.zeros((0, *inputs.shape), np.float32)
            norm_state = Normalizer.fit(x, config.data.normalize)
        self.normalizer = norm_state or Normalizer.fit(np.zeros((0, *(inputs.shape if inputs else ())), np.float32), "none")
        tensors = None if norm_state is None else (torch.from_numpy(norm_state.shift), torch.from_numpy(norm_state.scale))
        augment = config.data.augment if isinstance(probe, tuple) else None
        rows = (
            {id(d): _rows(d, src, len(d), UserSplit(d, np.arange(len(d)), config.seed, src)) for d in datasets.values()}
            if isinstance(probe, tuple)
            else {}
        )
        main = config.data.num_workers == 0 and config.data.in_memory != "never"  # batches read in the loop's process
        self._splits = {
            s: UserSplit(
                datasets[s],
                parts[s],
                config.seed,
                src,
                tensors,
                label_index,
                augment if s == "train" else None,
                rows.get(id(datasets[s])),
                main,
            )
            for s in parts
        }
        self.feature_names = [str(f) for f in getattr(train, "feature_names", []) or []]
        self.source = src

    @property
    def input_shape(self) -> tuple[int, ...]:
        from taktstock.data.dataset import input_shape

        return input_shape(self._spec)

    def split(self, name: str) -> UserSplit:
        return self._splits[name]

    def spec(self) -> Spec:
        return dict(self._spec)

    def preprocessing(self) -> dict[str, Any]:
        from taktstock.data.prepare import normalized_preprocessing

        # predict rebuilds this dataset from data.kwargs and replays its `features(rows)` hook
        return normalized_preprocessing(self, dataset=self.source)


def _label_values(dataset: Any, n: int, source: str, seed: int) -> list[Any]:
    """Every item's class label: the dataset's `targets` when it has them, else one read of each item."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        values = [_label_key(t) if isinstance(t, (torch.Tensor, np.generic)) else t for t in list(targets)]
        if len(values) != n:
            raise ConfigError(f"data.source: {source}.targets has {len(values)} labels for {len(dataset)} items")
        return values
    reader = UserSplit(dataset, np.arange(n), seed, source)  # read as evaluation reads, a batch at a time
    out: list[Any] = []
    for start in range(0, n, READ_CHUNK):
        batch = reader.get_batch_of(np.arange(start, min(n, start + READ_CHUNK)), None)
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]  # default_collate makes tuples lists
        out += [_label_key(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    return out


def _rows(dataset: Any, source: str, n: int, reader: UserSplit) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dataset's `arrays()` as tensors (its items are those rows: they are indexed, not read), checked
    against the first and last items; None when it has no `arrays()`."""
    arrays = getattr(dataset, ROWS_HOOK, None)
    if not callable(arrays):
        return None
    got = arrays()
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise ConfigError(f"data.source: {source}.{ROWS_HOOK}() must return (inputs, targets) arrays, got {type(got).__name__}")
    x, y = (v if isinstance(v, torch.Tensor) else np.asarray(v) for v in got)
    if not isinstance(y, torch.Tensor) and y.dtype.kind not in "biuf":
        raise ConfigError(f"data.source: {source}.{ROWS_HOOK}() targets must be numbers (got {y.dtype}); text labels need item reads")
    x, y = _as_batch(x), _as_batch(y)
    if len(x) != n or len(y) != n:
        raise ConfigError(f"data.source: {source}.{ROWS_HOOK}() has {len(x)} inputs and {len(y)} targets for {n} items")
    for i in {0, n - 1}:
        sample = reader.samples([i])[0]
        if not isinstance(sample, tuple) or not torch.equal(sample[0], x[i]) or not torch.equal(torch.as_tensor(sample[1]), y[i]):
            raise ConfigError(
                f"data.source: item {i} of {source} differs from row {i} of its {ROWS_HOOK}(); `{ROWS_HOOK}()` promises that "
                "items are exactly those rows (no random transforms), so drop it or make it match"
            )
    return x, y


def prepare_user_source(config: Config, verbose: bool = False) -> Any:
    """`data.source: module:Name`: a Dataset class used lazily, or a function returning (x, y) arrays.

    A class (or factory) that takes a `split` argument is built once per split with "train", "val" and
    "test", so it can augment only its training items or read its own split files (data.split_by)."""
    from taktstock.data.prepare import prepare_arrays
    from taktstock.data.sources import accepts_split, construct_user_source, source_code_hash, user_arrays

    src, per_split = config.data.source, None
    obj, produced = construct_user_source(config, split="train")
    if isinstance(produced, tuple):
        if accepts_split(obj):
            raise ConfigError(f"data.source: {src} takes `split` but returns arrays; a split-aware source must return a Dataset")
        return prepare_arrays(config, verbose, raw=user_arrays(config, obj, produced))
    if accepts_split(obj):
        per_split = {"train": produced} | {s: construct_user_source(config, split=s)[1] for s in SPLITS[1:]}
    elif config.data.split_by == "dataset":
        raise ConfigError(f"data.split_by: 'dataset' needs a data.source whose constructor takes a `split` argument; {src} does not")
    datasets = per_split or dict.fromkeys(SPLITS, produced)
    for s, d in datasets.items():
        if not hasattr(d, "__len__") or not hasattr(d, "__getitem__"):
            where = f"(split={s!r}) " if per_split else ""
            raise ConfigError(f"data.source: {src}{where} must be a Dataset (len + indexing) or return (x, y) arrays")
    extras = []
    for d in {id(d): d for d in datasets.values()}.values():  # each distinct object once
        fingerprint_fn = getattr(d, "fingerprint", None)
        extras += [len(d), str(fingerprint_fn()) if callable(fingerprint_fn) else ""]
    if per_split:  # a split-aware dataset: every split's size and fingerprint, and who splits
        extras.append(config.data.split_by)
    key = json.dumps([src, config.data.kwargs, source_code_hash(obj), *extras], default=str)
    if verbose:
        print(f"preparing {src} (a Dataset{', one per split' if per_split else ''}: read lazily, items not cached)")
    given = per_split is not None and config.data.split_by == "dataset"
    return UserPrepared(config, datasets, hashlib.sha256(key.encode()).hexdigest()[:16], given)
