"""The model taktstock trains (config.yaml: model.name: models.net:TabularNet).

taktstock passes `input_shape` and `num_outputs` from the prepared data; every other constructor
argument comes from the `model:` section of the config and is checked against this signature.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TabularNet(nn.Module):
    """Feature vector -> class logits: an input projection, residual MLP blocks, a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, width: int = 64, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(depth)))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x.flatten(1))))
