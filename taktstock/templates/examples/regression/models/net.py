"""The model taktstock trains (config.yaml: model.name: models.net:RegressionMLP).

taktstock passes `input_shape` and `num_outputs` (1 for regression) from the prepared data; every
other constructor argument comes from the `model:` section of the config and is checked against this signature.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RegressionMLP(nn.Module):
    """Feature vector -> one prediction: Linear-SiLU-Dropout blocks plus a linear skip path.

    The linear skip path lets the network start from (and improve on) a linear regression, which
    is strong on small tabular regression problems.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.1) -> None:
        super().__init__()
        features = math.prod(input_shape)
        layers: list[nn.Module] = []
        width = features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.mlp = nn.Sequential(*layers)
        self.linear = nn.Linear(features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x) + self.mlp(x)
