"""Tokenizers with Hugging Face `tokenizers`: trained on the training split at prepare time, or loaded from a file.

Trained tokenizers share one set of special tokens so padding is always id 0 and documents end with `[EOS]`.
`tokenizers` is imported inside the functions: `taktstock --help` must not pay for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from taktstock.errors import ConfigError, UserError

PAD, UNK, CLS, SEP, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, EOS]  # in id order: [PAD] is 0
KINDS = ("bpe", "wordpiece", "unigram", "byte")


def _require() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("text data needs the Hugging Face tokenizers package: pip install 'taktstock[text]'") from None
    return tokenizers


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, pair_template: bool = False) -> Any:
    """Train a `tokenizers.Tokenizer` of `kind` on `texts` (the training split only).

    `pair_template` adds `[CLS] A [SEP] (B [SEP])` around encodings, for classification; language modelling
    wants the raw token stream.
    """
    tk = _require()
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    if kind not in KINDS:
        raise ConfigError(f"data.tokenizer.train: expected one of {', '.join(KINDS)}, got '{kind}'")
    common = {"vocab_size": vocab_size, "special_tokens": SPECIAL_TOKENS, "show_progress": False}
    if kind == "byte":
        # GPT-2 style: every byte is in the alphabet, so nothing is ever unknown and decoding is lossless.
        tok = tk.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common)
    elif kind == "wordpiece":
        tok = tk.Tokenizer(models.WordPiece(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(**common)
    else:
        # Metaspace keeps the spaces as "▁", so decode(encode(text)) restores the words and their spacing.
        model = models.BPE(unk_token=UNK) if kind == "bpe" else models.Unigram()
        tok = tk.Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        if kind == "bpe":
            trainer = trainers.BpeTrainer(**common)
        else:
            trainer = trainers.UnigramTrainer(unk_token=UNK, **common)
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    if pair_template:
        cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
        )
    return tok


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(path: str | Path) -> Any:
    """A `tokenizer.json`, or a Hugging Face tokenizer directory containing one."""
    _require()
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        what = "has no tokenizer.json (only fast tokenizers are supported)" if path.is_dir() else "not found"
        raise ConfigError(f"data.tokenizer: {path} {what}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ConfigError(f"data.tokenizer: cannot read {file} ({exc})") from None


def pad_id(tok: Any) -> int:
    """The padding id: the tokenizer's own pad token if it has one, else 0 (masked out either way)."""
    if tok.padding is not None:
        return int(tok.padding["pad_id"])
    for name in (PAD, "<pad>", "<|pad|>"):
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    return 0


def eos_id(tok: Any) -> int | None:
    """The end-of-document token placed between documents of a corpus, if the tokenizer has one."""
    for name in (EOS, "<|endoftext|>", "</s>", "[SEP]", "<eos>"):
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    return None
