"""The inference model of a run: raw features in, probabilities (or regression values) out.

The training-time normalisation is read from RUN_DIR/preprocessing.json (never refitted) and baked into the
module as buffers, so every exported or registered form of the model takes raw, flat feature rows (or, for an
index-encoded table, the encoded numeric columns and the level indices). `encode_table_rows` and `predict_rows`
are the one path from raw table rows to predictions, shared by `taktstock predict` and the MLflow model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from taktstock.checkpoint.trained import load_trained_model
from taktstock.config.schema import Config
from taktstock.errors import ConfigError, UserError

if TYPE_CHECKING:
    import pyarrow as pa


class InferenceModel(nn.Module):
    """[batch, features] raw inputs -> reshape to the training input shape -> normalise -> model -> outputs."""

    def __init__(self, model: nn.Module, shift: torch.Tensor, scale: torch.Tensor, input_shape: tuple[int, ...], output: str) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("shift", shift.reshape(input_shape).float())
        self.register_buffer("scale", scale.reshape(input_shape).float())
        self.input_shape = tuple(input_shape)
        self.output = output  # "softmax", "sigmoid" or "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape((-1, *self.input_shape))
        return activate(self.model((x - self.shift) / self.scale), self.output)


class TableInferenceModel(nn.Module):
    """Index-encoded tables: (numeric [batch, n] encoded, not yet normalised; categorical [batch, k] level
    indices, 0 = unknown) -> normalise the numeric part -> model -> outputs."""

    def __init__(self, model: nn.Module, shift: torch.Tensor, scale: torch.Tensor, output: str) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("shift", shift.float())
        self.register_buffer("scale", scale.float())
        self.input_shape = tuple(shift.shape)
        self.output = output

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return activate(self.model((numeric - self.shift) / self.scale, categorical), self.output)


def activate(y: torch.Tensor, output: str) -> torch.Tensor:
    """Logits -> what inference returns: probabilities ("softmax", "sigmoid") or the values ("identity")."""
    if output == "softmax":
        return torch.softmax(y, dim=-1)
    if output == "sigmoid":
        return torch.sigmoid(y)
    return y


@dataclass
class LoadedRun:
    config: Config
    preprocessing: dict[str, Any]
    model: InferenceModel | TableInferenceModel

    @property
    def num_features(self) -> int:
        return math.prod(self.preprocessing["input_shape"])

    @property
    def class_names(self) -> list[str]:
        return list(self.preprocessing.get("class_names") or [])

    @property
    def feature_names(self) -> list[str]:
        return list(self.preprocessing.get("feature_names") or [])

    def sample_inputs(self, n: int = 16, seed: int = 0) -> torch.Tensor:
        """Raw-scale inputs around the training distribution (shift + scale * noise) for export checks."""
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *self.model.input_shape), generator=g)
        if self.preprocessing.get("kind") == "image":
            # Image models take (N, C, H, W) images as the eval transforms leave them (normalised floats).
            return noise
        return (self.model.shift + self.model.scale * noise).reshape(n, -1)

    @property
    def input_names(self) -> list[str]:
        """The model's named inputs, as export writes them: `x`, or `numeric` and `categorical` (index-encoded table)."""
        return ["numeric", "categorical"] if isinstance(self.model, TableInferenceModel) else ["x"]

    def example_inputs(self, n: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """One batch of every model input for export checks: `sample_inputs`, plus for an index-encoded table
        int64 level indices drawn over each column's embedding rows (0 = unknown included)."""
        if not isinstance(self.model, TableInferenceModel):
            return (self.sample_inputs(n, seed),)
        g = torch.Generator().manual_seed(seed)
        numeric = self.model.shift + self.model.scale * torch.randn((n, *self.model.input_shape), generator=g)
        cards = self.preprocessing["cardinalities"]
        categorical = (
            torch.stack([torch.randint(0, c, (n,), generator=g) for c in cards], dim=1) if cards else torch.zeros(n, 0, dtype=torch.int64)
        )
        return numeric, categorical


def encode_table_rows(loaded: LoadedRun, table: pa.Table, where: str) -> tuple[np.ndarray, ...]:
    """Raw rows of a table run (target absent; gaps and unseen levels allowed) -> the model's inputs, encoded by the
    encoder rebuilt from preprocessing.json exactly as in training; unseen levels are counted on stderr (`where`)."""
    from taktstock.data.tables import TableEncoder, report_unknown

    encoder = TableEncoder.from_state(loaded.preprocessing["table"])
    try:
        encoded = encoder.transform(table)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    report_unknown(encoded.unknown, where)
    if encoder.encoding == "index":
        return encoded.features, encoded.categories
    return (encoded.features,)


def predict_rows(loaded: LoadedRun, inputs: Sequence[torch.Tensor], batch_size: int = 1024) -> tuple[list[str], list[list]]:
    """(header, rows) of predictions: the class name and one probability per class, or the predicted value(s)."""
    count = len(inputs[0])
    with torch.no_grad():
        batches = [loaded.model(*(t[i : i + batch_size] for t in inputs)) for i in range(0, count, batch_size)]
    out = torch.cat(batches) if batches else torch.empty(0)
    if loaded.config.task == "regression":
        values = out.reshape(count, -1)
        header = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
        return header, values.tolist()
    classes = loaded.class_names
    if loaded.model.output == "sigmoid":  # one logit: probability of the positive class
        p1 = out.reshape(-1)
        probs = torch.stack([1 - p1, p1], dim=1)
    else:
        probs = out
    names = classes if len(classes) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    labels = probs.argmax(dim=1).tolist()
    rows = [[names[k], *p] for k, p in zip(labels, probs.tolist(), strict=True)]
    return ["prediction", *(f"prob_{n}" for n in names)], rows


def load_run(run_dir: str | Path, checkpoint: str = "best", table_fields: bool = True, weights: str | None = None) -> LoadedRun:
    """Build the inference model of a run from its config, preprocessing.json and weights (no data needed).

    A run on an index-encoded table gets a `TableInferenceModel` taking (numeric, categorical); `table_fields=False`
    refuses such a run instead (for a caller that takes one float matrix). `weights`: ema or raw for a train.ema
    run (`load_trained_model`)."""
    trained = load_trained_model(run_dir, checkpoint, weights=weights)
    config, prep = trained.config, trained.preprocessing
    spec = prep.get("spec") or {"inputs": {"shape": prep["input_shape"], "dtype": "float32"}}
    if config.task == "regression":
        output = "identity"
    else:
        output = "sigmoid" if prep["num_outputs"] == 1 else "softmax"
    shape = tuple(prep["input_shape"])
    if prep.get("kind") == "image":  # image files are normalised by their eval transforms (data/images/inference.py)
        shift, scale = torch.zeros(shape), torch.ones(shape)
    else:
        norm = prep["normalizer"]
        shift = torch.tensor(norm["shift"], dtype=torch.float32)
        scale = torch.tensor(norm["scale"], dtype=torch.float32)
    if "table" in prep and set(spec) == {"numeric", "categorical"}:
        if not table_fields:
            raise ConfigError(
                f"{run_dir}: this run's table is index-encoded (numeric and categorical inputs), not one float matrix: "
                "train with data.categorical_encoding=onehot for a single-matrix model"
            )
        return LoadedRun(config, prep, TableInferenceModel(trained.model, shift, scale, output).eval())
    if set(spec) != {"inputs"} or spec["inputs"]["dtype"] != "float32":
        fields = ", ".join(f"{k} ({v['dtype']})" for k, v in spec.items())
        raise ConfigError(f"{run_dir}: predict and export take rows of float features; this run's samples have the fields {fields}")
    model = InferenceModel(trained.model, shift, scale, shape, output).eval()
    return LoadedRun(config, prep, model)
