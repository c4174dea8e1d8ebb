"""Read labelled texts from JSONL, CSV, Parquet or a Hugging Face `save_to_disk` directory (all via pyarrow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taktstock.errors import ConfigError, UserError


@dataclass
class TextRecords:
    """Texts (and optional second texts) with their raw targets, in file order."""

    texts: list[str]
    pairs: list[str] | None
    targets: list[Any]


def read_table(path: Path) -> Any:
    """The file or directory as a `pyarrow.Table`."""
    import pyarrow as pa

    if not path.exists():
        raise UserError(f"data.path: not found: {path}")
    try:
        if path.is_dir():
            return _read_saved_dataset(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            import pyarrow.json as pj

            return pj.read_json(path)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pc

            delimiter = "\t" if suffix == ".tsv" else ","
            return pc.read_csv(path, parse_options=pc.ParseOptions(delimiter=delimiter, newlines_in_values=True))
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise UserError(f"data.path: cannot read {path} ({str(exc).splitlines()[0]})") from None
    raise UserError(f"data.path: {path}: expected .jsonl, .csv, .tsv, .parquet or a save_to_disk directory")


def _read_saved_dataset(path: Path) -> Any:
    """A `datasets.Dataset.save_to_disk` directory: Arrow stream files listed in state.json."""
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise UserError(f"data.path: {path} holds a DatasetDict ({', '.join(splits)}); point data.path at one split's directory")
    state = path / "state.json"
    if not state.is_file():
        raise UserError(f"data.path: {path} is not a save_to_disk directory (no state.json)")
    files = [path / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    tables = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    if not tables:
        raise UserError(f"data.path: {path} lists no data files")
    return pa.concat_tables(tables)


def _column(table: Any, name: str, key: str, path: Path) -> list[Any]:
    if name not in table.column_names:
        raise ConfigError(f"{key}: no field '{name}' in {path} (fields: {', '.join(table.column_names)})")
    return table.column(name).to_pylist()


def read_records(path: str | Path, text_field: str, target: str | None, text_pair_field: str | None = None) -> TextRecords:
    """Texts, optional pairs and targets; a missing field is a `ConfigError` naming the key."""
    path = Path(path)
    if target is None:
        raise ConfigError("data.target: name the label field of the text data")
    table = read_table(path)
    texts = _column(table, text_field, "data.text_field", path)
    pairs = _column(table, text_pair_field, "data.text_pair_field", path) if text_pair_field else None
    targets = _column(table, target, "data.target", path)
    for i, t in enumerate(targets):
        if t is None:
            raise UserError(f"data.target: row {i} of {path} has no '{target}' value")
    # A missing text is an empty one, not an error: real data has blanks.
    texts = ["" if t is None else str(t) for t in texts]
    if pairs is not None:
        pairs = ["" if t is None else str(t) for t in pairs]
    return TextRecords(texts, pairs, targets)
