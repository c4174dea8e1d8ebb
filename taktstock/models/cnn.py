"""A small convolutional network for small images (8x8 digits up to 32x32)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from taktstock.models.layers import activation_layer, image_shape
from taktstock.models.registry import register_model


@register_model("cnn")
class SmallCNN(nn.Module):
    """[Conv3x3 -> BN -> act] x2 per stage with 2x2 pooling between stages, global pooling, linear head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: list[int] = (32, 64),  # type: ignore[assignment]
        activation: Literal["relu", "gelu", "silu"] = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        in_ch, _, _ = image_shape(input_shape)
        self._input_shape = (in_ch, *input_shape[-2:])
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            for _ in range(2):
                blocks.append(nn.Conv2d(in_ch, ch, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    blocks.append(nn.BatchNorm2d(ch))
                blocks.append(activation_layer(activation))
                in_ch = ch
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(in_ch, num_outputs)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.reshape(x.shape[0], *self._input_shape)))
