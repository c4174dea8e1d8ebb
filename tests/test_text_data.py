"""Text data components: readers, tokenizers trained on train only, memory-mapped token stores, splits."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from taktstock.config.schema import Config
from taktstock.data.dataset import FieldSpec
from taktstock.data.text.classification import TextClassificationSplit, pad_batch
from taktstock.data.text.lm import LanguageModelingSplit, epoch_shift
from taktstock.data.text.prepared import corpus_files, prepare_corpus, prepare_text_classification, split_documents
from taktstock.data.text.readers import read_records
from taktstock.data.text.tokenizer import load_tokenizer, train_tokenizer
from taktstock.data.text.tokens import TokenStore, token_dtype, write_token_store
from taktstock.errors import ConfigError, UserError
from tests.text_helpers import labelled_sentences, python_sources, write_jsonl


def _config(**data) -> Config:
    return Config.model_validate({"seed": 3, "data": {"cache_dir": "cache"} | data})


# ----------------------------------------------------------------------------------------------- readers


def test_read_records_from_jsonl_csv_parquet_and_save_to_disk_agree(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    rows = [{"text": "one, with a comma", "second": "x", "label": "a"}, {"text": "two\nlines", "second": "y", "label": "b"}]
    table = pa.Table.from_pylist(rows)
    write_jsonl(tmp_path / "d.jsonl", rows)
    pc.write_csv(table, tmp_path / "d.csv")
    pq.write_table(table, tmp_path / "d.parquet")
    saved = tmp_path / "saved"  # the layout datasets.Dataset.save_to_disk writes
    saved.mkdir()
    with pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (saved / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    for path in ("d.jsonl", "d.csv", "d.parquet", "saved"):
        rec = read_records(tmp_path / path, "text", "label", "second")
        assert rec.texts == ["one, with a comma", "two\nlines"] and rec.pairs == ["x", "y"] and rec.targets == ["a", "b"], path


def test_read_records_names_the_missing_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"body": "hi", "label": 1}])
    with pytest.raises(ConfigError, match=r"data.text_field: no field 'text' .* \(fields: body, label\)"):
        read_records(tmp_path / "d.jsonl", "text", "label")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(UserError, match=r"expected \.jsonl"):
        read_records(tmp_path / "d.txt", "text", "label")


# -------------------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "byte"])
def test_trained_tokenizers_round_trip_and_pad_with_id_zero(kind: str) -> None:
    texts = [r["text"] for r in labelled_sentences(200)]
    tok = train_tokenizer(texts, kind, vocab_size=300)
    assert tok.token_to_id("[PAD]") == 0
    enc = tok.encode("the coach saw a new guitar", add_special_tokens=False)
    assert enc.ids and "[UNK]" not in enc.tokens
    decoded = tok.decode(enc.ids)
    assert decoded.replace(" ", "") == "thecoachsawanewguitar"


def test_tokenizer_is_trained_on_the_training_split_only(workdir: Path) -> None:
    rows = labelled_sentences(90)
    # One word per row that occurs nowhere else: whichever split a row lands in, only train rows may shape the vocabulary.
    for i, row in enumerate(rows):
        row["text"] += f" zq{i:03d}x"
    write_jsonl(workdir / "d.jsonl", rows)
    data = prepare_text_classification(
        _config(source="text", path="d.jsonl", target="label", tokenizer={"train": "wordpiece", "vocab_size": 2000})
    )
    vocab = load_tokenizer(data.tokenizer_path).get_vocab()
    train_words = {f"zq{i:03d}x" for i in range(90) if f"zq{i:03d}x" in vocab}
    sizes = data.meta["sizes"]
    assert len(train_words) == sizes["train"], "every unique training word is a whole token with this vocabulary size"
    # The held-out rows' unique words never became tokens.
    val_test_rows = sizes["val"] + sizes["test"]
    assert val_test_rows > 0 and len(train_words) == 90 - val_test_rows


def test_load_tokenizer_accepts_a_directory_and_rejects_a_missing_file(tmp_path: Path) -> None:
    tok = train_tokenizer(["hello world"] * 10, "bpe", 100)
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    assert load_tokenizer(tmp_path / "tok").encode("hello").ids == tok.encode("hello").ids
    with pytest.raises(ConfigError, match=r"data.tokenizer: .*nope.json not found"):
        load_tokenizer(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------- token store


def test_token_store_round_trips_and_picks_the_narrow_dtype(tmp_path: Path) -> None:
    seqs = [[1, 2, 3], [], [65535, 0]]
    assert write_token_store(tmp_path / "s", seqs, 65536) == 5
    store = TokenStore(tmp_path / "s", 65536)
    assert store.tokens.dtype == np.uint16 and isinstance(store.tokens, np.memmap)
    assert [store[i].tolist() for i in range(len(store))] == seqs
    assert token_dtype(65537) == np.uint32
    # Pickled for DataLoader workers without the mapped tokens; the copy maps the file itself.
    blob = pickle.dumps(store)
    assert len(blob) < 1000 and pickle.loads(blob)[2].tolist() == [65535, 0]
    with pytest.raises(ValueError, match="out of range"):
        write_token_store(tmp_path / "bad", [[70000]], 65536)


def test_token_file_is_memory_mapped_and_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """Reading every window of a 10x larger token file allocates no more memory than of the small one.

    tracemalloc sees every numpy and Python allocation (a copy of the tokens, a list of ids) but not the
    mapped file pages, which are page cache the kernel can drop; it is exact, so the check cannot flake.
    """
    import tracemalloc

    peaks = {}
    for name, n_tokens in (("small", 1_000_000), ("large", 10_000_000)):
        rng = np.random.default_rng(0)
        write_token_store(tmp_path / name, (rng.integers(0, 50000, 1_000_000) for _ in range(n_tokens // 1_000_000)), 50000)
        tracemalloc.start()
        split = LanguageModelingSplit(TokenStore(tmp_path / name, 50000), 64, seed=0)
        assert isinstance(split.store.tokens, np.memmap)
        seen = sum(len(split.get_batch(np.arange(s, min(s + 1024, len(split))), epoch=1)["labels"]) for s in range(0, len(split), 1024))
        peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert seen == len(split)
    # 10 M uint16 tokens are 20 MB (80 MB as int64): loaded or copied, they would show up here.
    assert peaks["large"] <= 1.1 * peaks["small"] + 1, peaks


# -------------------------------------------------------------------------------- classification split


def test_pad_batch_pads_to_the_longest_or_a_multiple() -> None:
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0, multiple_of=8)
    assert ids.shape == (2, 8) and mask.sum().item() == 4 and ids.dtype == torch.int64


def test_text_classification_split_collate_and_get_batch_agree(tmp_path: Path) -> None:
    write_token_store(tmp_path / "s", [[3, 4], [5, 6, 7, 8], [9]], 100)
    split = TextClassificationSplit(TokenStore(tmp_path / "s", 100), np.array([2, 0, 1]), pad_id=0, pad_to_multiple_of=None)
    assert len(split) == 3
    assert torch.equal(split[(7, 1)]["input_ids"], split[1]["input_ids"])  # no random transforms in text
    collated = split.collate([split[(0, i)] for i in (2, 0, 1)])
    fast = split.get_batch(np.array([2, 0, 1]), epoch=0)
    assert collated.keys() == fast.keys() == {"input_ids", "attention_mask", "labels"}
    for key in collated:
        assert torch.equal(collated[key], fast[key]) and collated[key].dtype == torch.int64
    assert collated["labels"].tolist() == [1, 2, 0] and collated["attention_mask"].sum().item() == 7


def test_prepare_text_classification_caches_and_respects_max_length(workdir: Path) -> None:
    write_jsonl(workdir / "d.jsonl", labelled_sentences(60))
    config = _config(source="text", path="d.jsonl", target="label", max_length=6, tokenizer={"train": "bpe", "vocab_size": 200})
    data = prepare_text_classification(config)
    assert data.class_names == ["food", "music", "sport"] and data.num_outputs == 3
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 60
    train = data.split("train")
    assert train.store.lengths().max() <= 6
    assert train[0]["input_ids"][0].item() == load_tokenizer(data.tokenizer_path).token_to_id("[CLS]")
    assert json.dumps(data.preprocessing()) and data.spec()["input_ids"] == FieldSpec((6,), "int64", data.vocab_size)
    again = prepare_text_classification(config)
    assert again.path == data.path and again.fingerprint == data.fingerprint
    assert prepare_text_classification(_config(**config.data.model_dump() | {"max_length": 7})).fingerprint != data.fingerprint


# ------------------------------------------------------------------------------------ language modelling


def test_lm_windows_are_shifted_inputs_with_an_epoch_shift_from_seed_and_epoch(tmp_path: Path) -> None:
    write_token_store(tmp_path / "s", [list(range(1, 50)), list(range(50, 100))], 200)
    split = LanguageModelingSplit(TokenStore(tmp_path / "s", 200), block_size=8, seed=5)
    assert len(split) == 99 // 8 - 1
    sample = split[0]
    assert sample["input_ids"].tolist() == list(range(1, 9)) and sample["labels"].tolist() == list(range(2, 10))
    shift = epoch_shift(5, 3, 8)
    assert split[(3, 2)]["input_ids"][0].item() == 1 + shift + 16
    assert epoch_shift(5, 3, 8) == shift and {epoch_shift(5, e, 8) for e in range(20)} != {shift}
    # The last window of every epoch, shift included, has its labels in range.
    for epoch in range(20):
        last = split[(epoch, len(split) - 1)]
        assert last["labels"].shape == (8,)
    idx = np.array([4, 0, 9, 2])
    fast = split.get_batch(idx, epoch=3)
    slow = split.collate([split[(3, int(i))] for i in idx])
    assert torch.equal(fast["input_ids"], slow["input_ids"]) and torch.equal(fast["labels"], slow["labels"])
    assert torch.equal(split.get_batch(idx, None)["input_ids"], split.collate([split[int(i)] for i in idx])["input_ids"])


def test_corpus_is_split_by_document_and_the_tokenizer_sees_train_documents_only(workdir: Path) -> None:
    docs = workdir / "corpus"
    docs.mkdir()
    for i in range(10):
        (docs / f"doc{i}.txt").write_text(f"unique{i}word " * 30 + "shared text here\n" * 5)
    config = _config(
        source="corpus",
        path="corpus/*.txt",
        block_size=16,
        val_fraction=0.2,
        test_fraction=0.1,
        tokenizer={"train": "bpe", "vocab_size": 300},
    )
    data = prepare_corpus(config)
    split_docs = data.meta["documents"]
    assert [len(split_docs[s]) for s in ("train", "val", "test")] == [7, 2, 1]
    assert sorted(name for names in split_docs.values() for name in names) == sorted(
        str(p.relative_to(workdir)) for p in docs.glob("*.txt")
    )
    vocab = load_tokenizer(data.tokenizer_path).get_vocab()
    for name in split_docs["val"] + split_docs["test"]:
        assert f"▁unique{Path(name).stem[3:]}word" not in vocab
    for name in split_docs["train"]:
        assert f"▁unique{Path(name).stem[3:]}word" in vocab
    store = data.store("train")
    assert len(store) == 7  # one stored sequence per document: the boundaries
    assert all(store[i][-1] == data.meta["eos_id"] for i in range(7))
    assert len(data.split("train")) == store.num_tokens // 16 - 1


def test_corpus_paths_folder_glob_and_errors(workdir: Path) -> None:
    python_sources(workdir / "src" / "a", 2)
    python_sources(workdir / "src" / "b", 1, start=5)
    assert len(corpus_files("src")) == 3 and len(corpus_files("src/**/*.txt")) == 3
    with pytest.raises(ConfigError, match=r"data\.path: no text files match 'nothing/\*\.txt'"):
        corpus_files("nothing/*.txt")
    with pytest.raises(ConfigError, match="2 document"):
        split_documents(2, 0, 0.5, 0.5)
    config = _config(source="corpus", path="src", block_size=100000, tokenizer={"train": "byte", "vocab_size": 400})
    with pytest.raises(ConfigError, match=r"data\.block_size: the train split has"):
        prepare_corpus(config).split("train")


# ----------------------------------------------------------------------------- workers and learning


def _keys(epoch: int, order: np.ndarray, batch: int) -> list[list[tuple[int, int]]]:
    return [[(epoch, int(i)) for i in order[s : s + batch]] for s in range(0, len(order), batch)]


def test_worker_processes_give_the_same_batches_as_the_main_process(workdir: Path) -> None:
    """The splits pickle without their mapped tokens, re-open them in each worker and batch identically."""
    from torch.utils.data import DataLoader

    write_jsonl(workdir / "d.jsonl", labelled_sentences(40))
    text = prepare_text_classification(
        _config(source="text", path="d.jsonl", target="label", tokenizer={"train": "bpe", "vocab_size": 150})
    )
    python_sources(workdir / "corpus", 4)
    corpus = prepare_corpus(_config(source="corpus", path="corpus", block_size=16, tokenizer={"train": "byte", "vocab_size": 300}))
    for split in (text.split("train"), corpus.split("train")):
        order = np.random.default_rng([3, 2]).permutation(len(split))[:48]
        batches = _keys(2, order, 8)
        loaders = [
            DataLoader(batches, batch_size=None, num_workers=w, collate_fn=lambda keys, s=split: s.collate([s[k] for k in keys]))
            for w in (0, 2)
        ]
        main, workers = (list(loader) for loader in loaders)
        assert len(main) == len(workers) == len(batches) >= 3
        for a, b in zip(main, workers, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        fast = [split.get_batch(np.array([k[1] for k in keys]), epoch=2) for keys in batches]
        assert all(torch.equal(a[k], f[k]) for a, f in zip(main, fast, strict=True) for k in a)


def test_text_classification_learns_above_chance(workdir: Path, one_thread) -> None:
    """The transformer on generated topic sentences, through the prepared splits' padded batches."""
    from taktstock.metrics.tokens import correct_count, token_cross_entropy
    from taktstock.models.transformer import TransformerClassifier

    write_jsonl(workdir / "d.jsonl", labelled_sentences(300))
    data = prepare_text_classification(
        _config(source="text", path="d.jsonl", target="label", pad_to_multiple_of=8, tokenizer={"train": "wordpiece", "vocab_size": 200})
    )
    train, val = data.split("train"), data.split("val")
    torch.manual_seed(0)
    model = TransformerClassifier(data.vocab_size, data.num_outputs, dim=32, depth=1, heads=2, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(3):
        order = np.random.default_rng([3, epoch]).permutation(len(train))
        for s in range(0, len(order), 32):
            batch = train.get_batch(order[s : s + 32], epoch)
            loss = token_cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    batch = val.get_batch(np.arange(len(val)))
    with torch.no_grad():
        hits, count = correct_count(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"])
    assert count.item() == len(val) == 45
    assert hits.item() / count.item() > 0.8  # chance is 1/3
