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

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from taktstock.config.schema import AugmentConfig, Config
from taktstock.data.augment import augment_batch, is_active
from taktstock.data.dataset import (
    EVAL_STREAM,
    SPLITS,
    Key,
    Spec,
    SplitDataset,
    sample_seed,
    spec_of_sample,
    split_key,
    to_tensor,
)
from taktstock.errors import ConfigError

NORMALIZE_SAMPLES = 10_000  # training items read to fit data.normalize (all of them in smaller sets)


@contextlib.contextmanager
def seeded_globals(value: int) -> Iterator[None]:
    """Run a block with the global torch (CPU), Python and NumPy generators seeded by `value`.

    In the main process (num_workers 0) they are restored afterwards, so the training process's own
    random stream (dropout, ...) is untouched; a worker has no other use for them (saving NumPy's
    state costs more than the read of a small item)."""
    if get_worker_info() is not None:
        torch.default_generator.manual_seed(value)
        random.seed(value)
        np.random.seed(value % 2**32)
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(value)  # CPU only: torch.manual_seed would reseed CUDA too
        random.seed(value)
        np.random.seed(value % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class UserSplit(SplitDataset):
    """One split of a user dataset: a subset of its indices, converted to tensors, normalised, labels mapped."""

    def __init__(
        self,
        dataset: Any,
        indices: np.ndarray,
        seed: int,
        source: str,
        normalizer: tuple[torch.Tensor, torch.Tensor] | None = None,
        label_index: dict[str, int] | None = None,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.dataset, self.indices, self.seed, self.source = dataset, indices, seed, source
        self.normalizer, self.label_index = normalizer, label_index
        self.augment = augment if augment is not None and is_active(augment) else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Key) -> Any:
        epoch, i = split_key(key)
        j = int(self.indices[i])
        value = sample_seed(self.seed, epoch, j) if epoch is not None else sample_seed(self.seed, 0, j, EVAL_STREAM)
        with seeded_globals(value):
            item = self.dataset[j]
        sample = self.convert(item)
        if self.augment is not None and epoch is not None and isinstance(sample[0], torch.Tensor):
            # data.augment on float inputs, keyed by the split position as for in-memory arrays
            sample = (augment_batch(sample[0][None], np.array([i]), epoch, self.seed, self.augment)[0], sample[1])
        return sample

    def convert(self, item: Any) -> Any:
        """A raw item -> a tensor sample: `(inputs, target)` or a dict with `labels`."""
        sample = check_item(item, self.source)
        if isinstance(sample, tuple):
            inputs, target = sample
            if self.normalizer is not None:
                shift, scale = self.normalizer
                inputs = (inputs - shift) / scale
            return inputs, self._label(target)
        return sample | {"labels": self._label(sample["labels"])}

    def _label(self, target: Any) -> Any:
        if self.label_index is None:
            return target
        return torch.tensor(self.label_index[_label_key(target)], dtype=torch.int64)


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
            x = np.stack([reader[i][0].numpy() for i in range(len(sample))]) if len(sample) else np.zeros((0, *inputs.shape), np.float32)
            norm_state = Normalizer.fit(x, config.data.normalize)
        self.normalizer = norm_state or Normalizer.fit(np.zeros((0, *(inputs.shape if inputs else ())), np.float32), "none")
        tensors = None if norm_state is None else (torch.from_numpy(norm_state.shift), torch.from_numpy(norm_state.scale))
        augment = config.data.augment if isinstance(probe, tuple) else None
        self._splits = {
            s: UserSplit(datasets[s], parts[s], config.seed, src, tensors, label_index, augment if s == "train" else None) for s in parts
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
    out = []
    for i in range(n):
        with seeded_globals(sample_seed(seed, 0, i, EVAL_STREAM)):  # as an evaluation read
            item = check_item(dataset[i], source)
        out.append(_label_key(item[1] if isinstance(item, tuple) else item["labels"]))
    return out


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
