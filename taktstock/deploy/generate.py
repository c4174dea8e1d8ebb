"""`taktstock generate`: sample a continuation from a trained language model, with the run's tokenizer.

Sampling draws from one `torch.Generator` seeded by `--seed`, on the CPU, so the same run, prompt and
settings print the same text every time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from taktstock.errors import ConfigError, UserError
from taktstock.run_dir import RunDir
from taktstock.training.sampling import complete, sample_tokens  # noqa: F401 (sample_tokens: re-exported)


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
    return complete(lm.model, lm.tokenizer, prompt, max_new_tokens, lm.block_size, temperature, top_k, seed, lm.eos_id)
