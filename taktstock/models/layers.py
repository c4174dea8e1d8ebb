"""Building blocks shared by the built-in models."""

from __future__ import annotations

from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name."""
    return _ACTIVATIONS[name]()


def mlp_layers(width: int, hidden: list[int], num_outputs: int, activation: str, dropout: float, batch_norm: bool) -> list[nn.Module]:
    """[Linear -> (BatchNorm) -> activation -> (Dropout)] per hidden size, then the output Linear."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(activation_layer(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return layers


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) for conv nets; a 2-D (H, W) input gets one channel."""
    if len(input_shape) == 2:
        return (1, *input_shape)  # type: ignore[return-value]
    if len(input_shape) != 3:
        raise ValueError(f"conv models need image inputs (C, H, W); got shape {tuple(input_shape)}")
    return tuple(input_shape)  # type: ignore[return-value]
