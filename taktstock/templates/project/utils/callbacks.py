"""Training callbacks: plain classes with any of the hooks

    on_train_start(trainer)    on_step_end(trainer)    on_validation_end(trainer, metrics)
    on_epoch_end(trainer)      on_train_end(trainer)

Enable them in the config:  train: {callbacks: ["utils.callbacks:EpochTimer"]}
`trainer.state.step` / `trainer.state.epoch` say where training is; setting
`trainer.state.stop_reason = "..."` in on_step_end stops training after that step.
"""

from __future__ import annotations

import time
from typing import Any


class EpochTimer:
    """Prints how long each epoch took and the monitored validation metric."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last_metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.last_metrics = metrics

    def on_epoch_end(self, trainer: Any) -> None:
        now = time.perf_counter()
        monitor = trainer.cfg.metrics.monitor
        value = self.last_metrics.get(monitor, float("nan"))
        print(f"epoch {trainer.state.epoch}: {now - self.start:.2f}s, {monitor} {value:.4f}")
        self.start = now
