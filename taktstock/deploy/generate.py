"""`taktstock generate`: sample a continuation from a trained language model, with the run's tokenizer.

Sampling draws from one `torch.Generator` seeded by `--seed`, on the CPU, so the same run, prompt and
settings print the same text every time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taktstock.errors import ConfigError, UserError
from taktstock.run_dir import RunDir
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


@dataclass
class LanguageModelRun:
    model: nn.Module
    tokenizer: Any
    block_size: int
    eos_id: int | None


def load_language_model(run_dir: str | Path, checkpoint: str = "best") -> LanguageModelRun:
    """The run's model (saved config + weights), tokenizer and block size; no data needed."""
    from taktstock.checkpoint.trained import load_trained_model
    from taktstock.data.text.tokenizer import load_tokenizer

    run = RunDir(Path(run_dir))
    if run.preprocessing.is_file() and json.loads(run.preprocessing.read_text()).get("kind") != "corpus":
        raise UserError(f"{run.root} is not a language-model run (data.source: corpus); generate needs one")
    trained = load_trained_model(run, checkpoint)
    prep = trained.preprocessing
    tokenizer_file = run.root / prep["tokenizer"]
    if not tokenizer_file.is_file():
        raise ConfigError(f"{run.root} has no {prep['tokenizer']} (training copies the tokenizer there when it starts)")
    tokenizer = load_tokenizer(tokenizer_file)
    return LanguageModelRun(trained.model, tokenizer, int(prep["block_size"]), prep.get("eos_id"))


def generate(
    run_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    checkpoint: str = "best",
) -> str:
    """The prompt and its sampled continuation, decoded together (so spacing at the seam is the tokenizer's)."""
    lm = load_language_model(run_dir, checkpoint)
    ids = lm.tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        # An empty prompt starts a new document, as after an end-of-document token in training.
        if lm.eos_id is None:
            raise UserError("--prompt: empty, and the tokenizer has no end-of-document token to start from")
        ids = [lm.eos_id]
    new = sample_tokens(lm.model, ids, max_new_tokens, lm.block_size, temperature, top_k, seed, stop_id=lm.eos_id)
    return lm.tokenizer.decode(ids + new, skip_special_tokens=True)
