"""Multi-layer perceptron for flat or image inputs."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from taktstock.models.layers import mlp_layers
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
        width = math.prod(input_shape)
        self.net = nn.Sequential(nn.Flatten(), *mlp_layers(width, hidden, num_outputs, activation, dropout, batch_norm))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
