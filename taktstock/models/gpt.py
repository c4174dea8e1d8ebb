"""A nanoGPT-style decoder-only language model."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from taktstock.models.attention import Block, rotary_tables
from taktstock.models.registry import register_model


@register_model("gpt")
class GPT(nn.Module):
    """Token embedding (+ learned positions, or rotary in attention) -> causal pre-norm blocks -> LayerNorm -> tied head.

    `model(input_ids=...)` returns logits [B, T, vocab_size]. Initialisation follows GPT-2: normal(0, 0.02),
    with the projections into the residual stream scaled by 1/sqrt(2 * depth) so its variance does not grow
    with depth.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 256,
        dim: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        positions: Literal["learned", "rotary"] = "learned",
        bias: bool = False,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.positions = positions
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(block_size, dim) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, bias=bias)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        if positions == "rotary":
            cos, sin = rotary_tables(block_size, dim // heads)
            # Not saved: recomputed from the config, so checkpoints stay weights only.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in block.residual_projections():
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * depth))

    def forward(self, input_ids: Tensor) -> Tensor:
        t = input_ids.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than the model's block_size {self.block_size}")
        x = self.embed(input_ids)
        rotary = None
        if self.pos is not None:
            x = x + self.pos(torch.arange(t, device=input_ids.device))
        else:
            rotary = (self.rope_cos[:t], self.rope_sin[:t])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, causal=True, rotary=rotary)
        return self.head(self.norm(x))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); without position embeddings, as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos is not None:
            n -= self.pos.weight.numel()
        return n
