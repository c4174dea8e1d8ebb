"""`taktstock predict`: batch inference on a CSV, Parquet or NPZ file (or image files) with the run's stored preprocessing.

Inputs are raw feature rows (as in the training source); the normalisation fitted at training time is read
from RUN_DIR/preprocessing.json and applied inside the model, never refitted on the new data. For a run trained on
a table (csv/parquet source), the rows are encoded first by the encoder rebuilt from preprocessing.json's "table".
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from taktstock.checkpoint.inference import encode_table_rows, predict_rows
from taktstock.deploy.model import LoadedRun, load_run
from taktstock.errors import UserError


def read_inputs(path: Path, loaded: LoadedRun) -> tuple[np.ndarray, ...]:
    """The model's inputs from raw rows: a float32 [rows, features] array, plus the int64 [rows, columns]
    level indices for a run on an index-encoded table."""
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    if "table" in loaded.preprocessing:
        return _read_table_rows(path, loaded)
    if path.suffix == ".npz":
        x = _read_npz(path)
    elif path.suffix == ".csv":
        x = _read_csv(path, loaded)
    else:
        raise UserError(f"{path}: expected a .csv or .npz file")
    x = x.reshape(len(x), -1)
    if x.shape[1] != loaded.num_features:
        raise UserError(f"{path}: rows have {x.shape[1]} values, the model expects {loaded.num_features}")
    return (x,)


def _read_table_rows(path: Path, loaded: LoadedRun) -> tuple[np.ndarray, ...]:
    """Raw table rows (target absent, gaps and unseen levels allowed) encoded exactly as in training."""
    from taktstock.data.tables import read_table

    return encode_table_rows(loaded, read_table(path, error=UserError), str(path))


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if "x" in keys:
            key = "x"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise UserError(f"{path}: expected an array named 'x' (found {', '.join(keys)})")
        return z[key].astype(np.float32)


def _read_csv(path: Path, loaded: LoadedRun) -> np.ndarray:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise UserError(f"{path}: empty file")
    header, body = rows[0], rows[1:]
    names = loaded.feature_names
    if names:
        # Columns are matched by name, so order and extra columns (ids, targets) do not matter.
        missing = [n for n in names if n not in header]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UserError(f"{path}: missing feature column(s) {shown} (the model was trained on {len(names)} named features)")
        index = [header.index(n) for n in names]
    else:
        index = list(range(len(header)))
    try:
        return np.array([[float(row[i]) for i in index] for row in body], dtype=np.float32).reshape(len(body), len(index))
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: non-numeric or missing value ({exc})") from None


def image_files(path: Path) -> list[Path]:
    """An image file, or every image file under a folder (sorted), for a run trained on images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input file not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise UserError(f"{path}: no image files ({' '.join(IMG_EXTENSIONS)})")
    return files


def predict(
    run_dir: str | Path, input_path: str | Path, checkpoint: str = "best", batch_size: int = 1024, weights: str | None = None
) -> tuple[list[str], list[list]]:
    """(CSV header, rows): the predicted class name and per-class probabilities, or the predicted value.

    For a run trained on images the input is an image file or a folder of them, and each row starts
    with the file's path; the eval transforms of training turn files into model inputs. `weights`: ema or raw
    for a train.ema run (as `evaluate --weights`).
    """
    if _is_text_run(Path(run_dir)):
        from taktstock.deploy.predict_text import predict_text

        return predict_text(run_dir, input_path, checkpoint, weights=weights)
    loaded = load_run(run_dir, checkpoint, weights=weights)
    files: list[Path] = []
    dataset = None
    if loaded.preprocessing.get("kind") == "image":
        from taktstock.data.images.inference import ImageInputs

        files = image_files(Path(input_path))
        to_inputs = ImageInputs(loaded.preprocessing)
        inputs = [torch.cat([to_inputs(files[i : i + batch_size]) for i in range(0, len(files), batch_size)])]
    elif loaded.preprocessing.get("dataset"):  # a user Dataset class: its own transform of raw rows
        from taktstock.deploy.dataset_rows import dataset_inputs

        x, dataset = dataset_inputs(Path(input_path), loaded)
        inputs = [torch.from_numpy(x)]
    else:
        inputs = [torch.from_numpy(a) for a in read_inputs(Path(input_path), loaded)]
    header, rows = predict_rows(loaded, inputs, batch_size)
    if dataset is not None and loaded.config.task == "regression":
        from taktstock.deploy.dataset_rows import dataset_outputs

        rows = dataset_outputs(dataset, rows)  # back to the raw rows' unit (the dataset's `predictions` hook)
    if files:
        return ["file", *header], [[str(f), *row] for f, row in zip(files, rows, strict=True)]
    return header, rows


def _is_text_run(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "preprocessing.json").read_text()).get("kind") == "text"
    except (OSError, ValueError):
        return False  # load_run reports the missing or broken file


def to_csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
