"""Loop position and running sums: everything about progress that a checkpoint must restore."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Sums:
    """Running sums: loss * n and correct predictions on the device (no host sync per step), samples as an int."""

    loss: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    count: int = 0

    def means(self, prefix: str, suffix: str, classification: bool) -> dict[str, float]:
        n = max(self.count, 1)
        out = {f"{prefix}/loss{suffix}": float(self.loss) / n}
        if classification:
            out[f"{prefix}/acc{suffix}"] = int(self.correct) / n
        return out

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()
        self.count = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        # clone: the sums may be views of a shared accumulator (StepTally); a checkpoint holds just these values
        return {
            "loss": self.loss.detach().clone().cpu(),
            "correct": self.correct.clone().cpu(),
            "count": torch.tensor(self.count, dtype=torch.int64),
        }

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        self.loss.copy_(d["loss"])
        self.correct.copy_(d["correct"])
        self.count = int(d["count"])


@dataclass
class LoopState:
    """Where the loop is. Checkpoints are taken only at optimizer-step boundaries."""

    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    step: int = 0  # optimizer steps done
    nan_skips: int = 0
    last_val_step: int = -1
    stop_reason: str | None = None  # set when training has ended: completed, max_steps, early_stopping

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k, v in d.items():
            setattr(self, k, v)
