"""`taktstock predict` for text-classification runs: raw texts in, the label and class probabilities out.

Texts are tokenised with the run's own `tokenizer.json` and truncated to the training `max_length`, read
from RUN_DIR/preprocessing.json, so inference sees exactly the ids training saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from taktstock.errors import ConfigError, UserError
from taktstock.run_dir import RunDir


def read_texts(path: Path, text_field: str, pair_field: str | None) -> tuple[list[str], list[str] | None]:
    """A .txt file (one text per non-empty line) or a JSONL/CSV/Parquet file with the training text field(s)."""
    from taktstock.data.text.readers import read_table

    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    if path.suffix.lower() == ".txt":
        if pair_field:
            raise UserError(f"{path}: this model reads text pairs; give a JSONL/CSV with '{text_field}' and '{pair_field}'")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], None
    table = read_table(path)

    def column(name: str) -> list[str]:
        if name not in table.column_names:
            raise UserError(f"{path}: no field '{name}' (the model was trained on '{name}'; fields: {', '.join(table.column_names)})")
        return ["" if v is None else str(v) for v in table.column(name).to_pylist()]

    return column(text_field), column(pair_field) if pair_field else None


def predict_text(
    run_dir: str | Path, input_path: str | Path, checkpoint: str = "best", batch_size: int = 64, weights: str | None = None
) -> tuple[list[str], list[list[Any]]]:
    """(CSV header, rows): the predicted class name and per-class probabilities of every text."""
    from taktstock.checkpoint.trained import load_trained_model
    from taktstock.data.text.classification import pad_batch
    from taktstock.data.text.tokenizer import load_tokenizer
    from taktstock.training.step import logits_of

    run = RunDir(Path(run_dir))
    trained = load_trained_model(run, checkpoint, weights=weights)
    prep = trained.preprocessing
    if prep.get("kind") != "text":
        raise ConfigError(f"{run.root} is not a text-classification run")
    tokenizer = load_tokenizer(run.root / prep["tokenizer"])
    tokenizer.no_padding()
    tokenizer.enable_truncation(prep["max_length"])
    model = trained.model
    texts, pairs = read_texts(Path(input_path), prep["text_field"], prep.get("text_pair_field"))
    names = list(prep["class_names"])
    rows: list[list[Any]] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        inputs = list(zip(chunk, pairs[start : start + batch_size], strict=True)) if pairs is not None else chunk
        ids = [e.ids or [prep["pad_id"]] for e in tokenizer.encode_batch(inputs)]
        input_ids, mask = pad_batch(ids, prep["pad_id"], prep.get("pad_to_multiple_of"))
        with torch.no_grad():
            probs = torch.softmax(logits_of(model(input_ids=input_ids, attention_mask=mask)).float(), dim=-1)
        rows.extend([names[int(p.argmax())], *p.tolist()] for p in probs)
    return ["prediction", *(f"prob_{n}" for n in names)], rows
