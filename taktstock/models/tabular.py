"""A model for tables with categorical columns: an embedding per column, concatenated with the numeric features, then an MLP."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from taktstock.models.layers import mlp_layers
from taktstock.models.registry import register_model


@register_model("tabular")
class TabularNet(nn.Module):
    """numeric [B, n] float32 and categorical [B, k] int64 level indices -> logits [B, num_outputs].

    `cardinalities` (rows per embedding table: the "unknown" index 0 plus each column's levels) come from the
    prepared data (`data.categorical_encoding: index`), like `input_shape`, never from the config.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        cardinalities: list[int] = (),  # type: ignore[assignment]
        embedding_dim: int | None = None,
        hidden: list[int] = (128, 128),  # type: ignore[assignment]
        activation: Literal["relu", "gelu", "tanh", "silu", "leaky_relu"] = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {list(hidden)}")
        if any(c < 2 for c in cardinalities):
            raise ValueError(f"every categorical column needs >= 2 embedding rows (unknown + a level), got {list(cardinalities)}")
        # Default width: the fast.ai rule of thumb, wider for more levels but never above 50.
        dims = [embedding_dim or min(50, math.ceil(1.6 * c**0.56)) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, dims, strict=True))
        width = math.prod(input_shape) + sum(dims)
        if width == 0:
            raise ValueError("the table has neither numeric nor categorical features")
        self.mlp = nn.Sequential(*mlp_layers(width, hidden, num_outputs, activation, dropout, batch_norm))

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric.flatten(1), *(emb(categorical[:, i]) for i, emb in enumerate(self.embeddings))]
        return self.mlp(torch.cat(parts, dim=1))
