"""Hugging Face causal LMs from the YAML on a corpus: `model.hf_config` (sized to the tokenizer taktstock trains)
and `hf:<dir>` (a save_pretrained model with its own tokenizer) train, validate with perplexity, evaluate,
generate and resume bit-identically after SIGKILL, all through the CLI.

The runs share one corpus (12 of Python's own stdlib modules) and its prepared cache; they go through the
resume harness's fork server, so a run pays for its transformers import only (the SIGKILL test's reference run
starts a fresh interpreter, see tests/resume_harness.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import cli_env, run_cli, write_config
from tests.resume_harness import shared_server
from tests.test_text_resume import _kill_and_compare, _records_without_timing
from tests.test_text_train import lm_config
from tests.text_helpers import python_sources

TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_lm")
    python_sources(root / "corpus", 12)
    return root


def hf_lm_config(model: dict[str, Any], **train: Any) -> dict[str, Any]:
    config = lm_config(**train)
    config["model"] = model
    return config


def train(root: Path, name: str, config: dict[str, Any]) -> tuple[int, str]:
    log = root / f"{name}.log"
    rc = shared_server().run(
        ["train", str(write_config(root / f"{name}.yaml", config)), "--run-dir", str(root / name)], root, log, timeout=300
    )
    return rc, log.read_text()


def test_hf_config_causal_lm_trains_evaluates_generates_and_resumes_bit_identically(root: Path) -> None:
    from taktstock.deploy.generate import generate
    from taktstock.evaluation.evaluate import evaluate

    config = hf_lm_config({"name": "hf:gpt2", "hf_config": TINY_GPT2}, log_every_n_steps=1, max_steps=20, val_every_n_steps=10)
    run, ref = _kill_and_compare(root, config | {"checkpoint": {"every_n_steps": 3}}, kills=2, seed=17)
    records = _records_without_timing(run)
    assert records == _records_without_timing(ref)
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [10, 20] and val[-1]["val/loss"] < math.log(512)  # below uniform guessing
    assert all(math.isclose(r["val/perplexity"], math.exp(r["val/loss"]), rel_tol=1e-9) for r in val)
    weights = load_file(str(ref / "best.safetensors"))
    assert weights["transformer.wte.weight"].shape == (512, 32)  # the embedding sized to the trained tokenizer
    assert "transformer.wte.weight" in weights and not any(k.startswith(("module.", "_orig_mod.")) for k in weights)
    assert "token_id" not in (root / "reference.log").read_text()  # no warning about GPT-2's 50256 outside the vocabulary
    values = evaluate(ref, split="test", quiet=True)
    assert set(values) == {"test/loss", "test/perplexity"}
    text = generate(ref, "def main(", max_new_tokens=16, temperature=1.0, seed=3)
    assert text.startswith("def main(") and text == generate(ref, "def main(", max_new_tokens=16, temperature=1.0, seed=3)


def _save_gpt2_with_its_own_tokenizer(folder: Path, corpus: Path) -> int:
    """A tiny GPT-2 and a byte-level tokenizer saved side by side; the tokenizer has one added token more than
    the model's embeddings (a pad token added after pretraining), so training must grow the embeddings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from taktstock.data.text.tokenizer import train_tokenizer

    texts = (line for f in sorted(corpus.glob("*.txt"))[:4] for line in f.read_text().splitlines())
    tok = train_tokenizer(texts, "byte", 400)
    model_vocab = tok.get_vocab_size()
    tok.add_special_tokens(["<|pad|>"])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=model_vocab, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return model_vocab


def test_saved_model_with_its_own_tokenizer_fine_tunes_and_generates_through_the_cli(root: Path) -> None:
    from taktstock.evaluation.evaluate import evaluate

    saved = root / "gpt2"
    model_vocab = _save_gpt2_with_its_own_tokenizer(saved, root / "corpus")
    pretrained = load_file(str(saved / "model.safetensors"))
    config = hf_lm_config({"name": f"hf:{saved}"}, max_steps=6, val_every_n_steps=6, log_every_n_steps=3)
    config["data"]["tokenizer"] = str(saved)
    rc, log = train(root, "tuned", config)
    assert rc == 0, log[-3000:]
    tuned = load_file(str(root / "tuned" / "model.safetensors"))
    assert tuned["transformer.wte.weight"].shape == (model_vocab + 1, 32)  # grown for the added token
    # Fine-tuned from the saved weights, not from scratch: the positions moved a little from where they were.
    assert 0 < float((tuned["transformer.wpe.weight"] - pretrained["transformer.wpe.weight"]).abs().max()) < 0.5
    assert set(evaluate(root / "tuned", split="test", quiet=True)) == {"test/loss", "test/perplexity"}
    out = run_cli("generate", str(root / "tuned"), "--prompt", "import os", "--max-new-tokens", "8", env=cli_env(OMP_NUM_THREADS="1"))
    assert out.returncode == 0 and out.stdout.startswith("import os"), out.stderr[-2000:]

    # The same saved model next to a tokenizer trained for the run: its embeddings cannot read those ids.
    config["data"]["tokenizer"] = {"train": "bpe", "vocab_size": 512}
    rc, log = train(root, "mismatch", config)
    assert rc == 2 and "Traceback" not in log, log[-3000:]
    assert f"data.tokenizer: hf:{saved} has {model_vocab} token embeddings but the tokenizer trained for this run has 512" in log


def test_a_config_that_cannot_hold_the_data_is_a_one_line_error_naming_the_key() -> None:
    from taktstock.errors import ConfigError
    from taktstock.models.zoo import build

    small = TINY_GPT2 | {"n_positions": 16}
    with pytest.raises(ConfigError, match=r"data\.block_size: 32 tokens per window, but model\.hf_config\.n_positions"):
        build("hf:gpt2", {}, (32,), 100, small, task="language_modeling", vocab_size=100)
    with pytest.raises(ConfigError, match=r"model\.hf_config\.vocab_size: 50 is smaller than the tokenizer's 100"):
        build("hf:gpt2", {}, (16,), 100, small | {"vocab_size": 50}, task="language_modeling", vocab_size=100)
    model = build("hf:gpt2", {}, (16,), 100, small, task="language_modeling", vocab_size=100)
    assert model.config.vocab_size == 100 and model.config.eos_token_id is None and model.config.use_cache is False
