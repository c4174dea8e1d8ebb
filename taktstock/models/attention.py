"""Pre-norm transformer blocks shared by the `transformer` encoder and the `gpt` decoder.

Attention is `F.scaled_dot_product_attention`, so PyTorch picks the flash / memory-efficient kernel for the
device and dtype; the optional rotary embedding rotates queries and keys (RoFormer, as in LLaMA and litgpt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin tables [seq_len, head_dim / 2] for rotary position embedding."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of [B, H, T, D] by the position angles (computed in float32)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal and mask is None)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): pre-norm, as in GPT-2 and most modern transformers."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, heads, dropout, bias)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, dim, bias=bias), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, causal, rotary))
        return x + self.mlp(self.norm2(x))

    def residual_projections(self) -> list[nn.Linear]:
        """The layers that write into the residual stream (GPT-2 scales their init by 1/sqrt(2 * depth))."""
        return [self.attn.proj, self.mlp[2]]
