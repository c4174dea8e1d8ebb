"""Loss functions by name, or a user callable by import path."""

from __future__ import annotations

import torch
from torch import nn

from taktstock.config.schema import LossConfig
from taktstock.registry import LOSSES
from taktstock.utils.imports import import_object, is_import_path


def check_loss_name(name: str) -> None:
    if not is_import_path(name):
        LOSSES.get(name, " or use 'module:callable'")


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


def _cross_entropy(c: LossConfig) -> nn.Module:
    weight = torch.tensor(c.class_weights, dtype=torch.float32) if c.class_weights else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=c.label_smoothing)


# The one declaration of the built-in losses and the task each is for (config.task and the loader ask here).
LOSSES.register("cross_entropy", _cross_entropy, task="classification")
LOSSES.register("bce_with_logits", lambda c: BCEWithLogits(), task="classification")
for _name, _cls in (("mse", nn.MSELoss), ("l1", nn.L1Loss), ("smooth_l1", nn.SmoothL1Loss), ("huber", nn.HuberLoss)):
    LOSSES.register(_name, lambda c, cls=_cls: RegressionLoss(cls()), task="regression")


def build_loss(c: LossConfig) -> nn.Module:
    """The loss of the `loss` section: a registered name or a user factory by import path."""
    check_loss_name(c.name)
    if not is_import_path(c.name):
        return LOSSES.get(c.name).obj(c)
    factory = import_object(c.name, "loss.name")
    return factory(**c.kwargs)
