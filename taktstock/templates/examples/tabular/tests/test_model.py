"""The model: output shapes, gradients, and that config.yaml's model arguments fit its signature."""

from pathlib import Path

import torch
from models.net import TabularNet

from taktstock import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_forward_gives_one_logit_per_class():
    model = TabularNet(input_shape=(13,), num_outputs=3, width=16, depth=1)
    assert model(torch.randn(5, 13)).shape == (5, 3)


def test_every_parameter_gets_a_gradient():
    model = TabularNet(input_shape=(13,), num_outputs=3, width=16, depth=2)
    model(torch.randn(8, 13)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_model_arguments_match_the_constructor():
    config = load_config(ROOT / "config.yaml")
    assert config.model.params()["width"] == 64
