"""The model: output shapes, gradients, and that config.yaml's model arguments fit its signature."""

from pathlib import Path

import torch
from models.net import RegressionMLP

from taktstock import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_forward_gives_one_prediction_per_sample():
    model = RegressionMLP(input_shape=(11,), num_outputs=1, hidden=(8,))
    assert model(torch.randn(5, 11)).shape == (5, 1)


def test_every_parameter_gets_a_gradient():
    model = RegressionMLP(input_shape=(11,), num_outputs=1, hidden=(8, 4), dropout=0.0)
    model(torch.randn(6, 11)).pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_model_arguments_match_the_constructor():
    config = load_config(ROOT / "config.yaml")
    assert config.task == "regression" and list(config.model.params()["hidden"]) == [64, 32]
