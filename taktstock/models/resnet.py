"""ResNet (CIFAR variant: 3x3 stem, no initial max-pool) for 32x32 or 8x8 images."""

from __future__ import annotations

from torch import Tensor, nn

from taktstock.models.layers import image_shape
from taktstock.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_model("resnet")
class ResNet(nn.Module):
    """ResNet-18 by default (blocks [2, 2, 2, 2], width 64); smaller widths/blocks for quick runs."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        blocks: list[int] = (2, 2, 2, 2),  # type: ignore[assignment]
        width: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_ch, _, _ = image_shape(input_shape)
        self._input_shape = (in_ch, *input_shape[-2:])
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        ch = width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(ch, out_ch, stride=2 if (i > 0 and j == 0) else 1))
                ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(ch, num_outputs)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x.reshape(x.shape[0], *self._input_shape))))
