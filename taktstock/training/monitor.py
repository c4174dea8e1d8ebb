"""Tracking the monitored metric: best value (for the best model) and patience (for early stopping)."""

from __future__ import annotations

import math
from typing import Any


class MetricMonitor:
    """Decides improvement of `metrics.monitor`; state is plain data saved in checkpoints."""

    def __init__(self, name: str, mode: str, min_delta: float = 0.0, patience: int | None = None) -> None:
        self.name, self.mode, self.min_delta, self.patience = name, mode, min_delta, patience
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_count = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record a new observation; True when it is the best so far."""
        if self.improved(value):
            self.best, self.best_step, self.bad_count = value, step, 0
            return True
        self.bad_count += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_count >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_count": self.bad_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad_count = state["best"], state["best_step"], state["bad_count"]
