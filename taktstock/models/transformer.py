"""A small transformer encoder classifier for token ids (text classification)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from taktstock.models.attention import Block
from taktstock.models.registry import register_model


@register_model("transformer")
class TransformerClassifier(nn.Module):
    """Token + learned position embedding -> pre-norm blocks -> LayerNorm -> masked mean or CLS pooling -> Linear.

    Called as `model(input_ids=..., attention_mask=...)` with the padded dict batch; padded positions are
    masked out of attention and pooling, so padding never changes a sample's logits.
    """

    def __init__(
        self,
        vocab_size: int,
        num_outputs: int,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        max_length: int = 512,
        pooling: Literal["mean", "cls"] = "mean",
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_length, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        t = input_ids.shape[1]
        if t > self.max_length:
            raise ValueError(f"sequence of {t} tokens is longer than the model's max_length {self.max_length} (set data.max_length)")
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        x = self.drop(self.embed(input_ids) + self.pos(torch.arange(t, device=input_ids.device)))
        # [B, 1, 1, T]: every query attends to the real keys of its own sample only.
        mask = keep[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = keep.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled)
