"""The model taktstock trains (config.yaml: model.name: models.net:SmallCNN).

taktstock passes `input_shape` (C, H, W) and `num_outputs` from the prepared data; every other
constructor argument comes from the `model:` section of the config and is checked against this signature.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv blocks (conv-BN-ReLU, then 2x2 max-pool except after the last) -> flatten -> MLP head."""

    def __init__(
        self, input_shape: tuple[int, ...], num_outputs: int, channels: tuple[int, ...] = (32, 64), hidden: int = 128, dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = input_shape[0]
        for i, out_ch in enumerate(channels):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        with torch.no_grad():  # infer the flattened size from a dummy input instead of doing the arithmetic
            flat = math.prod(self.features(torch.zeros(1, *input_shape)).shape[1:])
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
