"""`train.ema`: an exponential moving average of the weights, a stateful part of the run.

torch.optim.swa_utils.AveragedModel does the averaging (parameters and buffers, so BatchNorm
statistics are averaged too): the first update copies the weights, every later one is
`ema.lerp_(weights, 1 - decay)`. The trainer updates it after each optimizer step and validates
with it, so the monitored metric, best.safetensors and early stopping all judge the EMA weights.
It is registered with the checkpointer as the part "ema" (`training/parts.py`), so a resume
continues the same average bit for bit.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from taktstock.config.schema import EmaConfig


class ModelEma:
    """Keeps the EMA of `model` (the plain module, never its compiled/DDP wrapper: no key prefixes)."""

    def __init__(self, model: nn.Module, cfg: EmaConfig) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.model, self.every = model, cfg.every_n_steps
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (same structure and state-dict keys as the trained one)."""
        return self.averaged.module

    def update(self, step: int) -> None:
        """After optimizer step `step` (counted from 1): average every `every_n_steps` steps."""
        if step % self.every == 0:
            self.averaged.update_parameters(self.model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()  # the averaged weights and buffers plus n_averaged

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)


def averaged_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The averaged model's own state dict (keys of the trained model) from a `ModelEma.state_dict()`."""
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}


def build_ema(cfg: EmaConfig | None, model: nn.Module) -> ModelEma | None:
    return ModelEma(model, cfg) if cfg is not None else None
