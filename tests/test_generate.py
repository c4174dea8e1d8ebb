"""Sampling for `taktstock generate` (the CLI on a real trained run is in tests/test_text_train.py)."""

from __future__ import annotations

import torch

from taktstock.deploy.generate import sample_tokens
from taktstock.models.gpt import GPT
from tests.conftest import run_cli


def test_generate_refuses_a_run_that_is_not_a_language_model(workdir) -> None:
    proc = run_cli("generate", str(workdir), "--prompt", "x")
    assert proc.returncode == 2 and "not a run directory" in proc.stderr and "Traceback" not in proc.stderr


def test_sampling_is_deterministic_respects_top_k_and_crops_to_the_block() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=20, block_size=4, dim=16, depth=1, heads=2).eval()
    a = sample_tokens(model, [1, 2, 3], 12, block_size=4, temperature=1.0, top_k=1, seed=0)
    greedy = sample_tokens(model, [1, 2, 3], 12, block_size=4, temperature=0.0)
    assert a == greedy and len(a) == 12  # top_k=1 is greedy; the 15-token context never exceeds block_size 4
    b = sample_tokens(model, [1, 2, 3], 12, block_size=4, temperature=2.0, seed=7)
    assert b == sample_tokens(model, [1, 2, 3], 12, block_size=4, temperature=2.0, seed=7)
    stop = greedy[0]
    assert sample_tokens(model, [1, 2, 3], 12, block_size=4, temperature=0.0, stop_id=stop) == [stop]
