"""The dataset seam: what every data source hands to training, evaluation, export and predict.

A source produces a `PreparedDataset`: task facts (`task`, `num_outputs`, `class_names`), one
`SplitDataset` per split, the sample `spec()` (input names -> shape and dtype, used to build models,
export and dry runs), the `preprocessing()` state inference needs, and a `fingerprint` (cache key).

A `SplitDataset` is a map-style torch Dataset. Training indexes it with `(epoch, index)` keys and
every random transform of a sample draws from `sample_generator(seed, epoch, index)`, so 0, 2 or 4
workers and a resumed run produce the same samples; evaluation indexes it with a plain `int` (no
random transforms). Samples are `(inputs, target)` tuples or dicts of named fields with the target
under `"labels"`; `collate` builds batches of the same structure. A split may also offer
`get_batch(indices, epoch)`, a whole-batch fast path used instead of per-sample collation.

A new source plugs in with `@register_dataset("name")` on a function `config -> PreparedDataset`;
it lands in `registry.SOURCES`, which config validation asks (with the source's own `check`, if any).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from taktstock.registry import SOURCES

Key = int | tuple[int, int]
SPLITS = ("train", "val", "test")
IGNORE_INDEX = -100  # labels at this value (padding) count in no loss, accuracy or tally


def split_key(key: Key) -> tuple[int | None, int]:
    """(epoch, index) of a sample key; epoch is None for a plain evaluation index."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return None, int(key)


TRAIN_STREAM, EVAL_STREAM = 7, 8  # disjoint seed streams for training and evaluation reads


_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """SplitMix64's finaliser on Python ints (per-sample calls: numpy's per-call overhead would dominate)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def sample_seed(seed: int, epoch: int, index: int, stream: int = TRAIN_STREAM) -> int:
    """A 63-bit seed that depends on (seed, epoch, index, stream) only (counter-based, no generator state)."""
    return (_mix(_mix(_mix(_mix(seed & _MASK) ^ (epoch & _MASK)) ^ stream) ^ (index & _MASK)) >> 1) or 1


def sample_seeds(seed: int, epoch: int, indices: np.ndarray, stream: int = TRAIN_STREAM) -> list[int]:
    """`sample_seed` of many indices at once (numpy uint64 arithmetic: one call per batch, not per sample)."""
    key = _mix(_mix(_mix(seed & _MASK) ^ (epoch & _MASK)) ^ stream)
    with np.errstate(over="ignore"):
        z = np.asarray(indices, dtype=np.uint64) ^ np.uint64(key)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = (z ^ (z >> np.uint64(31))) >> np.uint64(1)
    z[z == 0] = 1
    return z.tolist()


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator a random transform of sample `index` in `epoch` must draw from."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


@dataclass(frozen=True)
class FieldSpec:
    """Shape (per sample, without the batch dimension) and dtype of one input field."""

    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix: float32, int64, uint8, ...
    vocab_size: int | None = None  # token-id fields: the embedding size a model needs
    cardinalities: tuple[int, ...] | None = None  # per-column level-index fields (tables): embedding rows of each

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.vocab_size is not None:
            d["vocab_size"] = self.vocab_size
        if self.cardinalities is not None:
            d["cardinalities"] = list(self.cardinalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FieldSpec:
        cards = d.get("cardinalities")
        return cls(tuple(d["shape"]), d["dtype"], d.get("vocab_size"), None if cards is None else tuple(cards))

    @classmethod
    def of(cls, t: torch.Tensor) -> FieldSpec:
        return cls(tuple(t.shape), str(t.dtype).removeprefix("torch."))


Spec = dict[str, FieldSpec]


def spec_of_sample(sample: Any) -> Spec:
    """The input fields of one (converted) sample: `inputs` for a tuple with a tensor, else the field names."""
    inputs = sample[0] if isinstance(sample, tuple) else {k: v for k, v in sample.items() if k != "labels"}
    if isinstance(inputs, torch.Tensor):
        return {"inputs": FieldSpec.of(inputs)}
    return {k: FieldSpec.of(v) for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def input_shape(spec: Spec) -> tuple[int, ...]:
    """The `input_shape` a model constructor receives: the `inputs` field, else the first field."""
    field = spec.get("inputs") or next(iter(spec.values()))
    return tuple(field.shape)


class Collated:
    """A batch a split's `__getitems__` built whole (PyTorch's batched fetch): `collate` passes it through."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class SplitDataset(Dataset):
    """One split of a prepared dataset. Subclasses implement `__len__` and `__getitem__(key)`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, key: Key) -> Any:
        raise NotImplementedError

    def collate(self, samples: Sequence[Any] | Collated) -> Any:
        """Samples -> one batch of the same structure (tuple or dict of stacked tensors); a batch the split's
        `__getitems__` already built passes through."""
        if isinstance(samples, Collated):
            return samples.value
        return default_collate(list(samples))

    def samples(self, keys: Sequence[Key]) -> list[Any]:
        """The samples of `keys`, one each (not collated); a split may read them together (user datasets)."""
        return [self[k] for k in keys]

    # Optional: `get_batch(indices: np.ndarray, epoch: int | None) -> batch`, a whole-batch fast path.
    get_batch: Callable[[np.ndarray, int | None], Any] | None = None


@runtime_checkable
class PreparedDataset(Protocol):
    """What `prepare(config)` returns, whatever the source."""

    task: str  # classification | regression | language_modeling
    num_outputs: int
    class_names: list[str]
    fingerprint: str

    def split(self, name: str) -> SplitDataset: ...

    def spec(self) -> Spec: ...

    def preprocessing(self) -> dict[str, Any]: ...


def register_dataset(
    name: str, check: Callable[[Any], None] | None = None, **meta: Any
) -> Callable[[Callable[[Any], PreparedDataset]], Callable[[Any], PreparedDataset]]:
    """Decorator: make `fn(config) -> PreparedDataset` available as `data.source: <name>`.

    `check(config)`, when given, runs at config load (before any data is read) and raises a
    `ConfigError` naming the key for settings the source cannot use. `meta` are further facts config
    validation reads from the registry: `task` (what `data.task: auto` resolves to, e.g.
    `language_modeling`) and `length_key` (the data key, e.g. `block_size`, a model's same-named
    argument must reach).
    """

    def decorate(fn: Callable[[Any], PreparedDataset]) -> Callable[[Any], PreparedDataset]:
        # In the registry config validation asks, so `data.source: name` passes the load-time check.
        return SOURCES.register(name, fn, kind="dataset", check=check, **meta)

    return decorate


def dataset_source(name: str) -> Callable[[Any], PreparedDataset] | None:
    """The registered prepared-dataset builder for `data.source: name`, if there is one."""
    entry = SOURCES.find(name)  # the first lookup imports the built-in sources (image folders among them)
    return entry.obj if entry is not None and entry.meta.get("kind") == "dataset" else None


def registered_datasets() -> list[str]:
    return SOURCES.where(kind="dataset")


def to_tensor(value: Any) -> Any:
    """A sample field as tensors: floats become float32, integers int64 (token ids, class ids), uint8 stays.

    Tuples, lists and dicts are converted field by field, so mixed items such as
    `({"image": ..., "meta": ...}, y)` keep their structure.
    """
    if isinstance(value, dict):
        return {k: to_tensor(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)) and not (value and isinstance(value[0], (int, float, bool))):
        return tuple(to_tensor(v) for v in value)
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.is_floating_point():
        return t if t.dtype == torch.float32 else t.to(torch.float32)
    if t.dtype in (torch.uint8, torch.bool, torch.int64):
        return t
    if t.is_complex():
        return t
    return t.to(torch.int64)


def batch_labels(batch: Any) -> Any:
    """The targets of a batch: `batch["labels"]` or the second element of a tuple."""
    return batch["labels"] if isinstance(batch, dict) else batch[1]
