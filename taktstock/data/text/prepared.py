"""Prepared text datasets (the seam's prepared-dataset contract), built once per fingerprint into the cache.

Cache layout (`data.cache_dir/text-<fingerprint>/` or `corpus-<fingerprint>/`): `tokenizer.json`,
`<split>.bin` + `<split>.offsets.npy` (token stores), `<split>.labels.npy` (classification) and `meta.json`,
written to a temporary directory and renamed, so an interrupted prepare never leaves a half cache.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taktstock.config.schema import Config, TokenizerTrainConfig
from taktstock.data.dataset import FieldSpec, Spec, register_dataset
from taktstock.data.text import tokenizer as tokenizers_
from taktstock.data.text.classification import TextClassificationSplit
from taktstock.data.text.lm import LanguageModelingSplit
from taktstock.data.text.tokens import TokenStore, write_token_store
from taktstock.errors import ConfigError

TEXT_PREP_VERSION = 1  # bump when tokenisation or splitting changes: invalidates caches
SPLITS = ("train", "val", "test")


def _file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(f"{path.name}:".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _tokenizer_setting(config: Config) -> dict[str, Any]:
    spec = config.data.tokenizer
    if isinstance(spec, TokenizerTrainConfig):
        return spec.model_dump()
    path = Path(spec)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"data.tokenizer: {spec} not found (a tokenizer.json, a tokenizer directory, or {{train: bpe, vocab_size: N}})")
    return {"file": _file_hash([file])}


def text_fingerprint(config: Config, source_hash: str, kind: str) -> str:
    """Cache key: the source content and every setting that changes the tokens or the split."""
    from taktstock.data.prepare import split_settings

    d = config.data
    # A corpus splits whole documents by a seeded permutation (split_documents): data.stratify has no say.
    settings = {
        "version": TEXT_PREP_VERSION,
        "kind": kind,
        "source": source_hash,
        **split_settings(config, stratify=kind == "text"),
        "tokenizer": _tokenizer_setting(config),
    }
    if kind == "text":
        settings |= {"text_field": d.text_field, "pair": d.text_pair_field, "target": d.target, "max_length": d.max_length}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _obtain_tokenizer(config: Config, train_texts: Iterator[str], pair_template: bool) -> Any:
    spec = config.data.tokenizer
    if isinstance(spec, TokenizerTrainConfig):
        return tokenizers_.train_tokenizer(train_texts, spec.train, spec.vocab_size, pair_template=pair_template)
    return tokenizers_.load_tokenizer(spec)


class _CacheWriter:
    """A temporary directory next to the final one, renamed into place on success."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None or self.final.exists():  # failed, or another process finished first
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.replace(self.tmp, self.final)


def _cached_meta(path: Path, fp: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("fingerprint") == fp else None


def _prepared(config: Config, source_hash: str, kind: str, write: Callable[[Path, str], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The cache directory `<kind>-<fingerprint>` and its meta: reopened when complete, else built by
    `write(temporary_dir, fingerprint)` and renamed into place."""
    fp = text_fingerprint(config, source_hash, kind)
    cache = Path(config.data.cache_dir) / f"{kind}-{fp}"
    meta = _cached_meta(cache, fp)
    if meta is None:
        with _CacheWriter(cache) as tmp:
            meta = write(tmp, fp)
    return cache, meta


# ---------------------------------------------------------------------------------------------- classification


@dataclass
class TextClassificationData:
    """A prepared text-classification dataset: splits of token ids + labels, the tokenizer, the label names."""

    path: Path
    meta: dict[str, Any]
    seed: int

    task = "classification"

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def split(self, name: str) -> TextClassificationSplit:
        store = TokenStore(self.path / name, self.vocab_size)
        labels = np.load(self.path / f"{name}.labels.npy", mmap_mode="r")
        return TextClassificationSplit(store, labels, self.meta["pad_id"], self.meta["pad_to_multiple_of"])

    def spec(self) -> Spec:
        """Input fields; the shape is the longest a sample can be (batches are padded to their longest)."""
        shape = (self.meta["max_length"],)
        return {"input_ids": FieldSpec(shape, "int64", self.vocab_size), "attention_mask": FieldSpec(shape, "int64")}

    def preprocessing(self) -> dict[str, Any]:
        """What predict needs: the tokenizer file name (copied into the run), lengths, padding, label names."""
        keys = ("vocab_size", "max_length", "pad_id", "pad_to_multiple_of", "text_field", "text_pair_field", "class_names")
        return _with_spec(self, {"kind": "text", "tokenizer": "tokenizer.json"} | {k: self.meta[k] for k in keys})


def _with_spec(data: Any, prep: dict[str, Any]) -> dict[str, Any]:
    # The one model loader (checkpoint/trained.py) builds the model from these, as for every source.
    spec = data.spec()
    return prep | {
        "num_outputs": data.num_outputs,
        "input_shape": list(spec["input_ids"].shape),
        "spec": {k: v.to_dict() for k, v in spec.items()},
    }


@register_dataset("text", task="classification", length_key="max_length")
def prepare_text_classification(config: Config) -> TextClassificationData:
    """Read, split (stratified, as for every taktstock source), train the tokenizer on train, tokenise, cache."""
    from taktstock.data.prepare import _split_indices
    from taktstock.data.sources import _targets
    from taktstock.data.text.readers import read_records

    d = config.data
    if not d.path:
        raise ConfigError("data.path: required for data.source=text")
    path = Path(d.path)
    source_hash = _file_hash(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]) if path.exists() else ""

    def write(tmp: Path, fp: str) -> dict[str, Any]:
        records = read_records(path, d.text_field, d.target, d.text_pair_field)
        y, classes = _targets([str(t) for t in records.targets], config)
        return _write_classification(config, records, y, classes, _split_indices(config, y), tmp, fp)

    cache, meta = _prepared(config, source_hash, "text", write)
    # pad_to_multiple_of only shapes batches, so it is not part of the cache key.
    meta = meta | {"pad_to_multiple_of": d.pad_to_multiple_of}
    return TextClassificationData(cache, meta, config.seed)


def _write_classification(config: Config, records: Any, y: np.ndarray, classes: list[str], parts: dict, out: Path, fp: str) -> dict:
    d = config.data
    train = parts["train"]

    def train_texts() -> Iterator[str]:
        # The tokenizer sees the training split only: val/test words must not shape the vocabulary.
        for i in train:
            yield records.texts[i]
            if records.pairs is not None:
                yield records.pairs[i]

    tok = _obtain_tokenizer(config, train_texts(), pair_template=True)
    tok.no_padding()
    tok.enable_truncation(d.max_length)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    unk = tok.token_to_id(tokenizers_.UNK)
    fallback = [unk if unk is not None else tokenizers_.pad_id(tok)]
    for name in SPLITS:
        idx = parts[name]
        texts = [records.texts[i] for i in idx]
        pairs = [records.pairs[i] for i in idx] if records.pairs is not None else None
        inputs = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
        encodings = tok.encode_batch(inputs) if inputs else []
        # An empty text with a tokenizer without special tokens has no ids; one [UNK] keeps attention defined.
        write_token_store(out / name, (e.ids or fallback for e in encodings), vocab_size)
        np.save(out / f"{name}.labels.npy", y[idx].astype(np.int64))
    tok.save(str(out / "tokenizer.json"))
    meta = {
        "fingerprint": fp,
        "vocab_size": vocab_size,
        "max_length": d.max_length,
        "pad_id": tokenizers_.pad_id(tok),
        "text_field": d.text_field,
        "text_pair_field": d.text_pair_field,
        "class_names": classes,
        "sizes": {name: len(parts[name]) for name in SPLITS},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


# ------------------------------------------------------------------------------------------ language modelling


def corpus_files(pattern: str) -> list[Path]:
    """`data.path` as a file, a folder (every *.txt below it) or a glob (`**` recursive), sorted."""
    path = Path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise ConfigError(f"data.path: no text files match '{pattern}'")
    return files


def split_documents(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Document indices per split: a seeded permutation, val and test at least one document each when asked for."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise ConfigError(
            f"data: {n} document(s) cannot be split with val_fraction={val_fraction}, test_fraction={test_fraction} "
            "(each split needs whole documents; add files or lower the fractions)"
        )
    return {"val": np.sort(order[:n_val]), "test": np.sort(order[n_val : n_val + n_test]), "train": np.sort(order[n_val + n_test :])}


def _read_lines(path: Path, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """A file as chunks of whole lines (about 1 MB each), so one huge file never sits in memory at once."""
    with path.open(encoding="utf-8", errors="replace") as f:
        buf: list[str] = []
        size = 0
        for line in f:
            buf.append(line)
            size += len(line)
            if size >= chunk_chars:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)


@dataclass
class LanguageModelingData:
    """A prepared corpus: per-split token streams with document boundaries, and the tokenizer."""

    path: Path
    meta: dict[str, Any]
    seed: int
    block_size: int

    task = "language_modeling"

    @property
    def class_names(self) -> list[str]:
        return []  # the outputs are the vocabulary, not named classes

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def num_outputs(self) -> int:
        return self.vocab_size

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def store(self, name: str) -> TokenStore:
        """The split's tokens; `offsets` are its document boundaries."""
        return TokenStore(self.path / name, self.vocab_size)

    def split(self, name: str) -> LanguageModelingSplit:
        split = LanguageModelingSplit(self.store(name), self.block_size, self.seed)
        if name in ("train", "val") and len(split) == 0 and self.meta["tokens"][name]:
            raise ConfigError(
                f"data.block_size: the {name} split has {self.meta['tokens'][name]} tokens, too few for one window of "
                f"{self.block_size} (lower data.block_size or give the split more documents)"
            )
        return split

    def spec(self) -> Spec:
        return {"input_ids": FieldSpec((self.block_size,), "int64", self.vocab_size)}

    def preprocessing(self) -> dict[str, Any]:
        """What generate needs: the tokenizer file name (copied into the run), the window, the end-of-document id."""
        keys = ("vocab_size", "eos_id")
        return _with_spec(
            self, {"kind": "corpus", "tokenizer": "tokenizer.json", "block_size": self.block_size} | {k: self.meta[k] for k in keys}
        )


@register_dataset("corpus", task="language_modeling", length_key="block_size")
def prepare_corpus(config: Config) -> LanguageModelingData:
    """Split the files by document, train the tokenizer on the train documents, tokenise each split once."""
    d = config.data
    if not d.path:
        raise ConfigError("data.path: required for data.source=corpus (a file, a folder or a glob of text files)")
    files = corpus_files(d.path)
    cache, meta = _prepared(config, _file_hash(files), "corpus", lambda tmp, fp: _write_corpus(config, files, tmp, fp))
    return LanguageModelingData(cache, meta, config.seed, d.block_size)


def _write_corpus(config: Config, files: list[Path], out: Path, fp: str) -> dict[str, Any]:
    d = config.data
    parts = split_documents(len(files), config.seed, d.val_fraction, d.test_fraction)
    train_files = [files[i] for i in parts["train"]]
    tok = _obtain_tokenizer(config, (c for f in train_files for c in _read_lines(f)), pair_template=False)
    tok.no_padding()
    tok.no_truncation()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eos = tokenizers_.eos_id(tok)

    def documents(names: list[Path]) -> Iterator[list[int]]:
        for file in names:
            ids: list[int] = []
            for chunk in _read_lines(file):
                ids.extend(tok.encode(chunk, add_special_tokens=False).ids)
            if eos is not None:
                ids.append(eos)  # the boundary the model learns to predict, and to stop at
            yield ids

    tokens = {name: write_token_store(out / name, documents([files[i] for i in parts[name]]), vocab_size) for name in SPLITS}
    tok.save(str(out / "tokenizer.json"))
    meta = {
        "fingerprint": fp,
        "vocab_size": vocab_size,
        "eos_id": eos,
        "tokens": tokens,
        "documents": {name: [str(files[i]) for i in parts[name]] for name in SPLITS},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
