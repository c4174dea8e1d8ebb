"""`taktstock prepare CONFIG --to-mds OUT`: a prepared dataset's splits as MDS shards, plus what training needs.

Layout: `OUT/{train,val,test}/` (streaming's `index.json` and `shard.NNNNN.mds` files), `OUT/taktstock.json`
(task, outputs, class names, sample spec, the source's preprocessing state, how samples are rebuilt and
batched) and, for text, `OUT/tokenizer.json`. Each split is written as it yields samples at evaluation (plain
int keys: no random transforms); token fields are stored as uint16/uint32 and language-modelling windows as
their `block_size + 1` tokens, so shards are no larger than the token file they come from.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taktstock.data.dataset import SPLITS, PreparedDataset, SplitDataset
from taktstock.errors import UserError

META = "taktstock.json"
FORMAT_VERSION = 1
WINDOW = "tokens"  # the column of a language-modelling window: input_ids + the last label


READ_CHUNK = 256  # samples read together


def _token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _structure(sample: Any, where: str) -> tuple[str, dict[str, torch.Tensor]]:
    """('tuple' | 'dict', named tensors) of one sample; anything else cannot be rebuilt from columns."""
    if isinstance(sample, tuple) and len(sample) == 2 and all(isinstance(t, torch.Tensor) for t in sample):
        return "tuple", {"inputs": sample[0], "target": sample[1]}
    if isinstance(sample, dict) and sample and all(isinstance(t, torch.Tensor) for t in sample.values()):
        return "dict", dict(sample)
    raise UserError(
        f"--to-mds: samples of {where} are {type(sample).__name__}s; MDS shards hold (inputs, target) tensor pairs or dicts of tensors"
    )


def _column(name: str, t: torch.Tensor, vocab: dict[str, int]) -> dict[str, str]:
    """How a field is stored (`encoding`, numpy `storage` dtype) and restored (`dtype`, torch name)."""
    dtype = str(t.dtype).removeprefix("torch.")
    storage = "uint8" if dtype == "bool" else dtype
    if name in vocab and dtype == "int64":
        storage = _token_dtype(vocab[name])  # token ids: 2 or 4 bytes each on disk, int64 again when read
    np.dtype(storage)  # a dtype numpy has no name for (bfloat16, complex32) fails here, before any shard is written
    return {"encoding": storage if t.dim() == 0 else f"ndarray:{storage}", "storage": storage, "dtype": dtype}


def _is_window(fields: dict[str, torch.Tensor]) -> bool:
    ids, labels = fields.get("input_ids"), fields.get("labels")
    return set(fields) == {"input_ids", "labels"} and ids is not None and labels is not None and torch.equal(ids[1:], labels[:-1])


def _layout(data: PreparedDataset, name: str, sample: Any) -> dict[str, Any]:
    kind, fields = _structure(sample, f"the {name} split")
    vocab = {k: f.vocab_size for k, f in data.spec().items() if f.vocab_size is not None}
    if data.task == "language_modeling" and _is_window(fields):
        size = vocab.get("input_ids") or data.num_outputs
        storage = _token_dtype(size)
        return {"kind": "window", "columns": {WINDOW: {"encoding": f"ndarray:{storage}", "storage": storage, "dtype": "int64"}}}
    return {"kind": kind, "columns": {k: _column(k, t, vocab) for k, t in fields.items()}}


def _collate(split: SplitDataset) -> dict[str, Any]:
    """How batches of this split are built: torch's default collate, or padding to the longest (text)."""
    from taktstock.data.text.classification import TextClassificationSplit
    from taktstock.data.text.lm import LanguageModelingSplit

    if isinstance(split, TextClassificationSplit):
        return {"kind": "pad", "pad_id": int(split.pad_id)}
    if isinstance(split, LanguageModelingSplit) or type(split).collate is SplitDataset.collate:
        return {"kind": "default"}
    raise UserError(f"--to-mds: {type(split).__name__} batches its samples with its own collate, which shards cannot carry")


def _rows(split: SplitDataset, layout: dict[str, Any]) -> Iterator[dict[str, Any]]:
    chunks = (split.samples(range(a, min(len(split), a + READ_CHUNK))) for a in range(0, len(split), READ_CHUNK))
    for sample in (s for chunk in chunks for s in chunk):  # read a chunk at a time (user datasets batch their reads)
        _, fields = _structure(sample, "a split")
        if layout["kind"] == "window":
            ids, labels = fields["input_ids"], fields["labels"]
            yield {WINDOW: torch.cat([ids, labels[-1:]]).numpy().astype(layout["columns"][WINDOW]["storage"])}
            continue
        row = {}
        for k, spec in layout["columns"].items():
            value = fields[k].numpy().astype(spec["storage"])
            row[k] = value if value.ndim else value.item()
        yield row


def write_mds(data: PreparedDataset, out: Path, shard_size: str = "64mb") -> dict[str, Any]:
    """Write every split of `data` under `out` (which must not exist yet); returns the metadata written.

    Written into a temporary sibling directory and renamed, so an interrupted export never looks complete."""
    from streaming import MDSWriter

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--to-mds: {out} already exists and is not an empty directory (choose a new one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    splits = {name: data.split(name) for name in SPLITS}
    first = next((s for s in splits.values() if len(s)), None)
    if first is None:
        raise UserError("--to-mds: every split of the dataset is empty")
    layout = _layout(data, "the dataset", first[0])
    columns = {k: spec["encoding"] for k, spec in layout["columns"].items()}
    try:
        for name, split in splits.items():
            # sha1 per shard in the index: a changed shard changes the index, and so the fingerprint of the shards.
            with MDSWriter(out=str(tmp / name), columns=columns, size_limit=shard_size, hashes=["sha1"]) as writer:
                for row in _rows(split, layout):
                    writer.write(row)
        tokenizer = getattr(data, "tokenizer_path", None)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        meta = {
            "format": "taktstock-mds",
            "version": FORMAT_VERSION,
            "task": data.task,
            "num_outputs": data.num_outputs,
            "class_names": list(data.class_names),
            "spec": {k: v.to_dict() for k, v in data.spec().items()},
            "preprocessing": data.preprocessing(),
            "source_fingerprint": data.fingerprint,
            "sizes": {name: len(split) for name, split in splits.items()},
            "layout": layout,
            "collate": _collate(first),
            "tokenizer": "tokenizer.json" if tokenizer is not None else None,
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta
