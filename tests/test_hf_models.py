"""hf: models: from model.hf_config, from a local save_pretrained directory; image batches through the CLI,
text models with hand-made dict batches (the dataset seam's model-call convention)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from taktstock.errors import ConfigError
from taktstock.models.zoo import build
from taktstock.training.step import default_step, logits_of
from tests.conftest import run_cli, tiny_config, write_config

TINY_BERT = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 32}  # fmt: skip
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}
TINY_VIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "patch_size": 4}


def dict_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # padding
    return {"input_ids": ids, "attention_mask": mask}


def call(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The default step's convention for dict batches (its logits helper reads `.logits`)."""
    return logits_of(model(**{k: v for k, v in batch.items() if k != "labels"}))


def test_text_classification_from_config_and_from_a_saved_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("hf:bert", {}, (7,), 4, TINY_BERT, task="classification")
    batch = dict_batch() | {"labels": torch.tensor([0, 3, 1])}
    logits = call(model, batch)
    assert logits.shape == (3, 4)
    F.cross_entropy(logits, batch["labels"]).backward()
    model.save_pretrained(tmp_path / "bert")
    reloaded = build(f"hf:{tmp_path / 'bert'}", {}, (7,), 4, None, task="classification").eval()
    model.eval()
    assert torch.equal(call(reloaded, batch), call(model, batch))
    other_head = build(f"hf:{tmp_path / 'bert'}", {}, (7,), 2, None, task="classification")  # head replaced
    assert call(other_head, batch).shape == (3, 2)
    assert torch.equal(other_head.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_causal_lm_loss_counts_real_tokens_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("hf:gpt2", {}, (7,), 50, TINY_GPT2, task="language_modeling")
    batch = dict_batch()
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    # The dataset seam's default step: model(**fields), .logits, per-position labels flattened.
    loss, logits, _ = default_step(model, batch | {"labels": labels}, torch.nn.CrossEntropyLoss())
    assert logits.shape == (3, 7, 50)
    real = labels != -100
    assert torch.allclose(loss, F.cross_entropy(logits[real], labels[real]))
    model.save_pretrained(tmp_path / "gpt2")
    assert build(f"hf:{tmp_path / 'gpt2'}", {}, (7,), 50, None, task="language_modeling").config.n_layer == 1


def test_a_missing_directory_or_id_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="taktstock never downloads"):
        build("hf:nobody/no-such-model", {}, (7,), 2, None)


def test_hf_image_model_trains_through_the_cli_and_reloads_from_a_saved_directory(workdir: Path) -> None:
    config = tiny_config(train={"epochs": 1, "max_steps": 2, "batch_size": 64, "log_every_n_steps": 1})
    config["model"] = {"name": "hf:vit", "hf_config": TINY_VIT, "freeze": ["vit.embeddings.*"]}
    run = workdir / "run"
    run_cli("train", str(write_config(workdir / "a.yaml", config)), "--run-dir", str(run), cwd=workdir, check=True)
    from safetensors.torch import load_file

    trained = load_file(str(run / "best.safetensors"))  # plain Hugging Face keys, no wrapper prefix
    vit = build("hf:vit", {}, (1, 8, 8), 10, TINY_VIT)
    vit.load_state_dict(trained)
    vit.save_pretrained(workdir / "vit")
    reloaded = build(f"hf:{workdir / 'vit'}", {}, (1, 8, 8), 10, None).eval()
    images = torch.randn(2, 1, 8, 8)
    assert torch.equal(reloaded(images), vit.eval()(images))  # tuple batches: images in, logits out
    assert reloaded(images).shape == (2, 10)


# A user Dataset of dict samples (token ids, attention mask, a class label): the dataset seam's text batches.
TOKENS = """
import numpy as np
from torch.utils.data import Dataset


class Tokens(Dataset):
    def __init__(self, n=96, length=8):
        g = np.random.default_rng(0)
        self.ids = g.integers(1, 20, (n, length)).astype(np.int64)
        self.targets = [int(3 in row) for row in self.ids]  # does token 3 occur: learnable by attention

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": np.ones_like(self.ids[i]), "labels": self.targets[i]}
"""


def test_hf_text_classification_trains_on_dict_batches_through_the_cli_and_evaluates(workdir: Path) -> None:
    (workdir / "tokens.py").write_text(TOKENS)
    config = tiny_config(
        data={"source": "tokens:Tokens", "normalize": "none"}, train={"epochs": 1, "max_steps": 3, "batch_size": 32, "log_every_n_steps": 1}
    )
    config["model"] = {"name": "hf:bert", "hf_config": TINY_BERT | {"vocab_size": 20}}
    run = workdir / "run"
    run_cli("train", str(write_config(workdir / "a.yaml", config)), "--run-dir", str(run), cwd=workdir, check=True)
    from taktstock.evaluation.evaluate import evaluate

    assert "test/acc" in evaluate(run, quiet=True)  # the one model loader rebuilds hf:bert from the run (in-process: one start-up less)
