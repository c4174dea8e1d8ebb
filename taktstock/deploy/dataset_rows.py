"""Raw CSV rows -> model inputs for a run trained on a user Dataset class, through the dataset's own hook.

A Dataset class may transform its raw rows (log scales, one-hot columns, ...) before taktstock sees an
item, so predict cannot read feature columns itself. The dataset states that transform once, as a
`features(rows)` method that its `__init__`/`__getitem__` use as well; predict builds the dataset from the
run's `data.kwargs` (so state fitted on the training file, such as category codes, is the same) and calls
it on the new rows. A dataset without the hook is refused rather than predicted on wrongly.

A regression dataset that transforms its target (a scale, a log) may define `predictions(values)`, the
inverse: predict applies it to the model's outputs, so the predictions are in the unit of the raw rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from taktstock.deploy.model import LoadedRun
from taktstock.errors import UserError

HOOK = "features"
OUTPUT_HOOK = "predictions"  # optional: model outputs -> values in the raw rows' unit (regression)


def dataset_inputs(path: Path, loaded: LoadedRun) -> tuple[np.ndarray, object]:
    """(float32 [rows, features] model inputs before normalisation, the dataset) from a CSV of raw rows."""
    from taktstock.data.sources import construct_user_source
    from taktstock.utils.imports import import_object

    source = loaded.preprocessing["dataset"]
    cls = import_object(source, "data.source")
    if not callable(getattr(cls, HOOK, None)):
        raise UserError(
            f"predict: the dataset {source} has no `{HOOK}(rows)` method, so predict cannot apply the transform "
            f"it uses on raw rows; add one (see docs/custom-code.md, 'Predicting on raw rows')"
        )
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    if path.suffix != ".csv":
        raise UserError(f"{path}: a run trained on {source} predicts on a .csv file of raw rows")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path}: no rows")
    _, dataset = construct_user_source(loaded.config, split="train")  # state fitted on the training data
    try:
        x = np.asarray(getattr(dataset, HOOK)(rows), dtype=np.float32)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: {source}.{HOOK} failed on these rows ({type(exc).__name__}: {exc})") from None
    x = x.reshape(len(x), -1)
    if len(x) != len(rows) or x.shape[1] != loaded.num_features:
        raise UserError(
            f"{path}: {source}.{HOOK} returned {x.shape[0]} rows of {x.shape[1]} values for {len(rows)} rows; "
            f"the model expects {loaded.num_features} values per row"
        )
    return x, dataset


def dataset_outputs(dataset: object, values: list[list[float]]) -> list[list[float]]:
    """Regression outputs through the dataset's `predictions(values)` hook, when it has one."""
    hook = getattr(dataset, OUTPUT_HOOK, None)
    if not callable(hook):
        return values
    raw = np.asarray(values, dtype=np.float64)
    out = np.asarray(hook(raw), dtype=np.float64).reshape(raw.shape[0], -1)
    if out.shape != raw.shape:
        raise UserError(f"{type(dataset).__name__}.{OUTPUT_HOOK} returned shape {out.shape} for outputs of shape {raw.shape}")
    return out.tolist()
