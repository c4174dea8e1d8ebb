"""Sampling continuations from a causal language model: `taktstock generate` and `logging.samples`.

Every draw comes from one CPU `torch.Generator` seeded by the caller, never from the global RNGs, so
sampling during training leaves dropout's random stream (and hence exact resume) untouched, and the
same model, prompt and settings give the same text every time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taktstock.errors import UserError
from taktstock.training.step import logits_of


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_id: int | None = None,
) -> list[int]:
    """Autoregressive sampling: crop the context to `block_size`, scale by temperature, keep the top k, draw.

    `temperature=0` is greedy decoding. Generation stops early at `stop_id` (the end-of-document token).
    """
    if temperature < 0:
        raise UserError(f"--temperature: must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k: must be >= 1, got {top_k}")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.int64, device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = logits_of(model(input_ids=ids[:, -block_size:]))[0, -1].float().cpu()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        out.append(nxt)
        if nxt == stop_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
    return out


def complete(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    block_size: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    eos_id: int | None,
    where: str = "--prompt",
) -> str:
    """The prompt and its sampled continuation, decoded together (so spacing at the seam is the tokenizer's)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        # An empty prompt starts a new document, as after an end-of-document token in training.
        if eos_id is None:
            raise UserError(f"{where}: empty, and the tokenizer has no end-of-document token to start from")
        ids = [eos_id]
    new = sample_tokens(model, ids, max_new_tokens, block_size, temperature, top_k, seed, stop_id=eos_id)
    return tokenizer.decode(ids + new, skip_special_tokens=True)
