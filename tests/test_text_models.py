"""The transformer classifier and the GPT decoder; token loss helpers; padding never changes loss or accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taktstock.data.text.classification import TextClassificationSplit
from taktstock.data.text.tokens import TokenStore, write_token_store
from taktstock.metrics.tokens import IGNORE_INDEX, TokenLossTally, correct_count, perplexity, token_cross_entropy, token_loss_sum
from taktstock.models.gpt import GPT
from taktstock.models.registry import available_models, build_model
from taktstock.models.transformer import TransformerClassifier
from taktstock.training.step import logits_of


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _text_split(tmp_path, lengths, multiple_of=None) -> TextClassificationSplit:
    rng = np.random.default_rng(0)
    write_token_store(tmp_path / "s", [rng.integers(1, 50, n) for n in lengths], 50)
    labels = np.arange(len(lengths)) % 3
    return TextClassificationSplit(TokenStore(tmp_path / "s", 50), labels, pad_id=0, pad_to_multiple_of=multiple_of)


def test_builtins_are_registered_and_get_the_vocabulary_injected() -> None:
    assert {"transformer", "gpt"} <= set(available_models())
    model = build_model("transformer", {"dim": 16, "depth": 1, "heads": 2}, (0,), 3, vocab_size=50)
    assert model.embed.num_embeddings == 50 and model.head.out_features == 3
    gpt = build_model("gpt", {"dim": 16, "depth": 1, "heads": 2, "block_size": 8}, (8,), 50, vocab_size=50)
    assert gpt.head.out_features == 50


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("multiple_of", [None, 8])
def test_padding_never_changes_the_classification_loss_or_accuracy(tmp_path, pooling, multiple_of) -> None:
    """A padded batch gives each sample the logits it gets alone; loss sums equal, hit counts exactly equal."""
    split = _text_split(tmp_path, [3, 17, 1, 9, 12, 5], multiple_of)
    torch.manual_seed(0)
    model = TransformerClassifier(vocab_size=50, num_outputs=3, dim=32, depth=2, heads=4, pooling=pooling).eval()
    batch = split.get_batch(np.arange(len(split)))
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        padded = logits_of(model(**{k: v for k, v in batch.items() if k != "labels"}))
        alone = torch.cat([model(input_ids=split[i]["input_ids"][None]) for i in range(len(split))])
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    loss_padded, n_padded = token_loss_sum(padded, batch["labels"])
    loss_alone = sum(token_loss_sum(alone[i : i + 1], batch["labels"][i : i + 1])[0] for i in range(len(split)))
    torch.testing.assert_close(loss_padded, loss_alone, rtol=1e-5, atol=1e-5)
    assert n_padded.item() == len(split)
    hits_padded, _ = correct_count(padded, batch["labels"])
    hits_alone = sum(correct_count(alone[i : i + 1], batch["labels"][i : i + 1])[0] for i in range(len(split)))
    assert hits_padded.item() == int(hits_alone)


def test_padding_with_ignored_labels_never_counts_in_the_language_modelling_loss() -> None:
    """Right-padded sequences with -100 labels: the per-token loss sum and count equal the unpadded ones'."""
    torch.manual_seed(0)
    model = GPT(vocab_size=40, block_size=16, dim=32, depth=2, heads=4).eval()
    seqs = [torch.randint(0, 40, (n,)) for n in (16, 5, 11)]
    ids = torch.zeros(3, 16, dtype=torch.int64)
    labels = torch.full((3, 16), IGNORE_INDEX)
    for row, s in enumerate(seqs):
        ids[row, : len(s) - 1], labels[row, : len(s) - 1] = s[:-1], s[1:]
    with torch.no_grad():
        total, count = token_loss_sum(model(input_ids=ids), labels)
        alone = [token_loss_sum(model(input_ids=s[None, :-1]), s[None, 1:]) for s in seqs]
    torch.testing.assert_close(total, sum(a[0] for a in alone), rtol=1e-5, atol=1e-4)
    assert count.item() == sum(int(a[1]) for a in alone) == 15 + 4 + 10
    hits, real = correct_count(model(input_ids=ids), labels)
    assert real.item() == 29 and hits.item() == sum(int(correct_count(model(input_ids=s[None, :-1]), s[None, 1:])[0]) for s in seqs)


def test_gpt_is_causal_and_ties_its_embeddings() -> None:
    for positions in ("learned", "rotary"):
        torch.manual_seed(0)
        model = GPT(vocab_size=30, block_size=12, dim=24, depth=2, heads=2, positions=positions).eval()
        assert model.head.weight is model.embed.weight
        x = torch.randint(0, 30, (2, 12))
        y = x.clone()
        y[:, 7:] = (y[:, 7:] + 1) % 30
        with torch.no_grad():
            a, b = model(input_ids=x), model(input_ids=y)
        assert torch.equal(a[:, :7], b[:, :7]), positions  # the future never leaks into earlier positions
        assert not torch.equal(a[:, 7:], b[:, 7:])
        assert all(k.startswith(("embed", "pos", "blocks", "norm", "head")) for k in model.state_dict())
        assert "rope_cos" not in model.state_dict()
    with pytest.raises(ValueError, match="block_size"):
        model(input_ids=torch.zeros(1, 13, dtype=torch.int64))


def test_gpt_init_scales_the_residual_projections_by_depth() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=100, block_size=8, dim=256, depth=8, heads=4)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].mlp[2].weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_token_loss_helpers_ignore_minus_100_and_give_perplexity() -> None:
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, IGNORE_INDEX, 3], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    real = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[real], labels[real])
    torch.testing.assert_close(token_cross_entropy(logits, labels), expected)
    tally = TokenLossTally()
    tally.update(logits[:1], labels[:1])
    tally.update(logits[1:], labels[1:])
    result = tally.compute()
    assert result["tokens"] == 3
    assert result["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(expected.item()), rel=1e-6)
    assert math.isnan(perplexity(0.0, 0)) and perplexity(1e6, 1) == math.inf
    assert token_cross_entropy(logits, torch.full((2, 3), IGNORE_INDEX)).item() == 0.0
    assert logits_of({"logits": logits}) is logits


def test_a_tiny_gpt_learns_a_repeating_sequence() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=10, block_size=8, dim=32, depth=1, heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq = torch.arange(9).repeat(3)[None]
    first = None
    for _ in range(40):
        loss = token_cross_entropy(model(input_ids=seq[:, :8]), seq[:, 1:9])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
