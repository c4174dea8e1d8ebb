"""Multi-layer perceptron for flat or image inputs."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from taktstock.models.layers import activation_layer
from taktstock.models.registry import register_model


@register_model("mlp")
class MLP(nn.Module):
    """Flatten -> [Linear -> (BatchNorm) -> activation -> Dropout] * len(hidden) -> Linear."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden: list[int] = (256, 256),  # type: ignore[assignment]
        activation: Literal["relu", "gelu", "tanh", "silu", "leaky_relu"] = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation_layer(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
