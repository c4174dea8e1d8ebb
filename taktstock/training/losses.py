"""Loss functions by name, or a user callable by import path."""

from __future__ import annotations

import torch
from torch import nn

from taktstock.config.schema import Config
from taktstock.errors import ConfigError
from taktstock.utils.imports import import_object, is_import_path

BUILTIN_LOSSES = ("cross_entropy", "mse", "l1", "smooth_l1", "huber", "bce_with_logits")


def check_loss_name(name: str) -> None:
    if name not in BUILTIN_LOSSES and not is_import_path(name):
        raise ConfigError(f"loss.name: unknown loss '{name}' (choose from {', '.join(BUILTIN_LOSSES)} or use 'module:callable')")


class RegressionLoss(nn.Module):
    """Wraps an element-wise regression loss so (N, 1) predictions match (N,) targets."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.ndim == target.ndim + 1 and pred.shape[-1] == 1:
            pred = pred.squeeze(-1)
        return self.loss(pred, target)


class BCEWithLogits(nn.Module):
    """Binary cross-entropy on (N,) or (N, 1) logits with integer or float targets."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(pred.reshape(target.shape).float(), target.float())


def build_loss(config: Config) -> nn.Module:
    c = config.loss
    check_loss_name(c.name)
    if c.name == "cross_entropy":
        weight = torch.tensor(c.class_weights, dtype=torch.float32) if c.class_weights else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=c.label_smoothing)
    if c.name == "mse":
        return RegressionLoss(nn.MSELoss())
    if c.name == "l1":
        return RegressionLoss(nn.L1Loss())
    if c.name == "smooth_l1":
        return RegressionLoss(nn.SmoothL1Loss())
    if c.name == "huber":
        return RegressionLoss(nn.HuberLoss())
    if c.name == "bce_with_logits":
        return BCEWithLogits()
    factory = import_object(c.name, "loss.name")
    return factory(**c.kwargs)
