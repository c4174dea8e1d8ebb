"""`train.ema`: an exponential moving average of the weights, as a trainer callback.

torch.optim.swa_utils.AveragedModel does the averaging (parameters and buffers, so BatchNorm
statistics are averaged too): the first update copies the weights, every later one is
`ema.lerp_(weights, 1 - decay)`. The trainer validates with `eval_model()`, so the monitored
metric, best.safetensors and early stopping all judge the EMA weights. The callback's
`state_dict` rides in every checkpoint (the trainer checkpoints callback state), so a resume
continues the same average bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taktstock.config.schema import Config, EmaConfig

EMA_FILE = "ema.safetensors"  # RUN_DIR/ema.safetensors: the final EMA weights (model.safetensors holds the raw ones)


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

    def on_step_end(self, trainer: Any) -> None:
        if trainer.state.step % self.every == 0:
            self.averaged.update_parameters(self.model)

    def eval_model(self) -> nn.Module:
        return self.module

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["ema"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()


def build_ema(config: Config, model: nn.Module) -> ModelEma | None:
    return ModelEma(model, config.train.ema) if config.train.ema is not None else None


def find_ema(callbacks: list[Any]) -> ModelEma | None:
    return next((cb for cb in callbacks if isinstance(cb, ModelEma)), None)
