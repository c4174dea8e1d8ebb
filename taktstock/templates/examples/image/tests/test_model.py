"""The model: output shapes, gradients, and that config.yaml's model arguments fit its signature."""

from pathlib import Path

import torch
from models.net import SmallCNN

from taktstock import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_forward_gives_one_logit_per_class():
    model = SmallCNN(input_shape=(1, 8, 8), num_outputs=10, channels=(4, 8), hidden=16)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_odd_image_sizes_work():
    model = SmallCNN(input_shape=(3, 13, 17), num_outputs=4, channels=(4, 8, 8), hidden=16)
    assert model(torch.randn(2, 3, 13, 17)).shape == (2, 4)


def test_every_parameter_gets_a_gradient():
    model = SmallCNN(input_shape=(1, 8, 8), num_outputs=10, channels=(4, 8), hidden=16)
    model(torch.randn(6, 1, 8, 8)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_model_arguments_match_the_constructor():
    config = load_config(ROOT / "config.yaml")
    assert list(config.model.params()["channels"]) == [16, 32]
