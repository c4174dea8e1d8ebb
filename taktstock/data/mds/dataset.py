"""`data.source: mds`: a dataset written by `taktstock prepare --to-mds`, from a local directory or a remote.

`data.path` is the shards' directory, or with `data.remote` (e.g. `s3://bucket/prefix`; the endpoint and
credentials come from `S3_ENDPOINT_URL` and the usual AWS variables) the local cache the shards are
downloaded into on first use (`data.cache_limit` bounds it, evicting). The sample order stays taktstock's
(seed, epoch) permutation, or with `data.shuffle_block` the shard-blocked order, over random access to the shards, so resume is exact and DDP ranks read their own slices; counter-based
`data.augment` applies on read, seeded by (seed, epoch, index) like in-memory arrays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from taktstock.config.schema import AugmentConfig, Config
from taktstock.data.dataset import SPLITS, FieldSpec, Key, Spec, SplitDataset, register_dataset, split_key
from taktstock.errors import ConfigError

META = "taktstock.json"  # as in write.py (not imported: that module imports torch-heavy text code lazily)
REMOTE_MARK = ".remote"  # in a cache directory: the remote its shards came from


def _restore(value: Any, spec: dict[str, str]) -> torch.Tensor:
    """A decoded column as the tensor the source yielded (the copy also makes it writable)."""
    return torch.from_numpy(np.asarray(value).astype(spec["dtype"]))


class ShardSplit(SplitDataset):
    """One split read from its shards: the samples `--to-mds` wrote, rebuilt with their original dtypes.

    Keys are `(epoch, index)` in training (`data.augment` applied, seeded per sample) or an `int`.
    """

    def __init__(
        self,
        shards: Any,
        size: int,
        meta: dict[str, Any],
        seed: int,
        augment: AugmentConfig | None,
        pad_multiple: int | None,
        shuffle_block: int | None = None,
    ) -> None:
        from taktstock.data.augment import is_active

        self.shards, self._len, self.seed, self.shuffle_block = shards, size, seed, shuffle_block
        self._windows: Any = None
        self.layout, self.collate_spec = meta["layout"], meta["collate"]
        self.augment = augment if augment is not None and is_active(augment) and self.layout["kind"] == "tuple" else None
        self.pad_multiple = pad_multiple

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key: Key) -> Any:
        epoch, index = split_key(key)
        if not 0 <= index < self._len:
            raise IndexError(index)
        row = self.shards.sample(index, self._window(epoch, index))
        columns = self.layout["columns"]
        if self.layout["kind"] == "window":
            tokens = _restore(row["tokens"], columns["tokens"])
            return {"input_ids": tokens[:-1], "labels": tokens[1:]}
        fields = {k: _restore(row[k], spec) for k, spec in columns.items()}
        if self.layout["kind"] == "dict":
            return fields
        x = fields["inputs"]
        if self.augment is not None and epoch is not None:
            from taktstock.data.augment import augment_batch

            x = augment_batch(x[None], np.array([index]), epoch, self.seed, self.augment)[0]
        return x, fields["target"]

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray | None:
        """The training order with data.shuffle_block: shard-blocked (see order.py); None: the sampler's permutation."""
        if self.shuffle_block is None:
            return None
        from taktstock.data.mds.order import blocked_order

        return blocked_order(self.shards.ends, seed, epoch, self.shuffle_block)

    def _window(self, epoch: int | None, index: int) -> tuple[int, frozenset[int]] | None:
        """The shards a training reader keeps (its block and the next); None: evaluation's current and next shard."""
        if epoch is None or self.shuffle_block is None:
            return None
        if self._windows is None:
            from taktstock.data.mds.order import BlockWindows

            self._windows = BlockWindows(self.shards.ends, self.seed, self.shuffle_block)
        return self._windows.window(epoch, self.shards.shard_of(index))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_windows": None}

    def collate(self, samples: Sequence[Any]) -> Any:
        if self.collate_spec["kind"] == "pad":
            from taktstock.data.text.classification import pad_batch

            ids, mask = pad_batch([s["input_ids"].numpy() for s in samples], self.collate_spec["pad_id"], self.pad_multiple)
            return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([s["labels"] for s in samples])}
        return default_collate(list(samples))


@dataclass
class PreparedShards:
    """The prepared dataset of `data.source: mds` (the seam's contract), from the shards' `taktstock.json`."""

    path: Path
    remote: str | None
    meta: dict[str, Any]
    fingerprint: str
    seed: int
    augment: AugmentConfig | None = None
    pad_to_multiple_of: int | None = None
    shuffle_block: int | None = None
    cache_limit: int | None = None

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def num_outputs(self) -> int:
        return int(self.meta["num_outputs"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def tokenizer_path(self) -> Path | None:
        """The text tokenizer the shards were written with (copied into the run like the text sources')."""
        name = self.meta.get("tokenizer")
        return self.path / name if name else None

    def split(self, name: str) -> ShardSplit:
        from taktstock.data.mds.shards import SplitShards

        shards = SplitShards(self.path, name, self.remote, self.cache_limit)
        augment = self.augment if name == "train" else None
        size = int(self.meta["sizes"][name])
        return ShardSplit(shards, size, self.meta, self.seed, augment, self.pad_to_multiple_of, self.shuffle_block)

    def spec(self) -> Spec:
        return {k: FieldSpec.from_dict(v) for k, v in self.meta["spec"].items()}

    def preprocessing(self) -> dict[str, Any]:
        """The source's own state (normalisation, tokenizer, image size...): predict and export work as for it."""
        return dict(self.meta["preprocessing"])


def cache_path(config: Config) -> Path:
    """data.path, or for a remote without one a cache directory under data.cache_dir named after the remote."""
    d = config.data
    if d.path:
        return Path(d.path)
    assert d.remote is not None
    return Path(d.cache_dir) / f"mds-{hashlib.sha256(d.remote.encode()).hexdigest()[:12]}"


def check_mds_config(config: Config) -> None:
    """Load-time checks (no data read): a location, and a remote streaming can download from."""
    d = config.data
    if not d.path and not d.remote:
        raise ConfigError("data.path: required for data.source=mds (the shards' directory, or the local cache of data.remote)")
    if d.remote is not None and "://" not in d.remote:
        raise ConfigError(f"data.remote: '{d.remote}' is not a URL (e.g. s3://bucket/prefix)")
    if d.cache_limit is not None and d.remote is None:
        raise ConfigError("data.cache_limit: applies to the cache of a data.remote (a local data.path is never evicted)")
    if d.cache_limit is not None and d.shuffle_block is None:
        # Not implied: the limit must not change the order, so the run is the same with and without it.
        raise ConfigError("data.cache_limit: needs data.shuffle_block (the shards per block of the training order, e.g. 4)")


@register_dataset("mds", check=check_mds_config, task="any")
def prepare_mds(config: Config) -> PreparedShards:
    """Read `taktstock.json` and the splits' indexes (downloading them into the cache on first use)."""
    from taktstock.data.mds.shards import SplitShards, fetch, remote_join

    check_mds_config(config)
    d, root = config.data, cache_path(config)
    if d.remote is not None:
        _claim_cache(root, d.remote)
        try:
            fetch(remote_join(d.remote, META), root / META)
            for name in SPLITS:
                SplitShards(root, name, d.remote).ensure_index()
        except Exception as exc:  # botocore's and streaming's errors: no common base class to name
            raise ConfigError(f"data.remote: cannot read the shards at {d.remote} ({str(exc).splitlines()[0]})") from None
    missing = [name for name in SPLITS if not (root / name / "index.json").is_file()]
    if not (root / META).is_file() or missing:
        what = f"no {missing[0]}/index.json" if missing else f"no {META}"
        raise ConfigError(f"data.path: {root} has {what} (write shards with `taktstock prepare CONFIG --to-mds {root}`)")
    meta = json.loads((root / META).read_text())
    _check_task(config, meta)
    if meta.get("tokenizer") and d.remote is not None:
        fetch(remote_join(d.remote, meta["tokenizer"]), root / meta["tokenizer"])
    h = hashlib.sha256((root / META).read_bytes())
    for name in SPLITS:
        h.update((root / name / "index.json").read_bytes())
    if d.cache_limit is not None:
        _check_cache_limit(root, int(d.cache_limit), int(d.shuffle_block or 1))
    limit = int(d.cache_limit) if d.cache_limit is not None else None
    return PreparedShards(root, d.remote, meta, h.hexdigest()[:16], config.seed, d.augment, d.pad_to_multiple_of, d.shuffle_block, limit)


def cache_minimum(root: Path, block: int) -> int:
    """Smallest workable data.cache_limit: the metadata, two blocks of the largest training shards (a block read
    and the next one prefetched, still held during validation) and two evaluation shards (the current and next)."""
    sizes = {
        name: sorted((int(s["raw_data"]["bytes"]) for s in json.loads((root / name / "index.json").read_text())["shards"]), reverse=True)
        for name in SPLITS
    }
    # Everything in the cache but shards, locks and temporary files: taktstock.json, indexes, tokenizer, .remote.
    metadata = sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and ".locks" not in p.relative_to(root).parts and p.suffix != ".mds" and not p.name.endswith(".tmp")
    )
    evaluation = max(sum(sizes[name][:2]) for name in ("val", "test"))
    return metadata + sum(sizes["train"][: 2 * block]) + evaluation


def _check_cache_limit(root: Path, limit: int, block: int) -> None:
    minimum = cache_minimum(root, block)
    if limit < minimum:
        raise ConfigError(
            f"data.cache_limit: {limit} bytes cannot hold two blocks of data.shuffle_block={block} shards plus two "
            f"evaluation shards; the minimum for these shards is {minimum} bytes"
        )


def _claim_cache(root: Path, remote: str) -> None:
    """A cache directory serves one remote: shards of another under the same names would be read silently."""
    mark = root / REMOTE_MARK
    if mark.is_file():
        if mark.read_text().strip() != remote:
            raise ConfigError(f"data.path: {root} caches the shards of {mark.read_text().strip()}, not {remote} (use another data.path)")
        return
    root.mkdir(parents=True, exist_ok=True)
    mark.write_text(remote + "\n")


def _check_task(config: Config, meta: dict[str, Any]) -> None:
    """The task follows the loss (or data.task) as for every source; it must be the one the shards were written for."""
    if config.task != meta["task"]:
        hint = "set data.task: language_modeling" if meta["task"] == "language_modeling" else f"use a {meta['task']} loss"
        raise ConfigError(
            f"data.task: the shards at {cache_path(config)} hold a {meta['task']} dataset, the config trains {config.task} ({hint})"
        )
