"""LoopSettings: the frozen per-run decisions the training loop reads (instead of the whole config)."""

from __future__ import annotations

from dataclasses import dataclass

from taktstock.config.schema import Config


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    max_steps: int | None
    steps_per_epoch: int
    total_steps: int  # of this run (epochs x steps per epoch, capped by max_steps)
    schedule_horizon: int  # the LR schedule's horizon: total_steps, or the original run's on resume
    horizon_bound: bool  # the scheduler's shape depends on the horizon: no scheduler steps beyond it
    accumulate: int
    grad_clip_norm: float | None
    log_every: int
    val_every: int | None
    histogram_every: int | None
    skip_nan: bool
    channels_last: bool
    classification: bool
    tokens: bool  # throughput counts real tokens (language modelling), not samples
    progress: str
    progress_every_minutes: float
    save_best: bool
    early_stopping: bool

    @classmethod
    def from_config(cls, config: Config, n_batches: int, schedule_horizon: int | None = None) -> LoopSettings:
        t = config.train
        per_epoch = -(-n_batches // t.accumulate_grad_batches)
        total = per_epoch * t.epochs
        total = min(total, t.max_steps) if t.max_steps else total
        from taktstock.checkpoint.checkpointer import HORIZON_SCHEDULERS

        return cls(
            epochs=t.epochs,
            max_steps=t.max_steps,
            steps_per_epoch=per_epoch,
            total_steps=total,
            schedule_horizon=total if schedule_horizon is None else schedule_horizon,
            horizon_bound=config.scheduler.name in HORIZON_SCHEDULERS,
            accumulate=t.accumulate_grad_batches,
            grad_clip_norm=t.grad_clip_norm,
            log_every=t.log_every_n_steps,
            val_every=t.val_every_n_steps,
            histogram_every=config.logging.histogram_every_n_steps,
            skip_nan=t.nan_policy == "skip",
            channels_last=t.channels_last,
            classification=config.task == "classification",
            tokens=config.task == "language_modeling",
            progress=config.logging.progress,
            progress_every_minutes=config.logging.progress_every_minutes,
            save_best=config.checkpoint.save_best,
            early_stopping=config.early_stopping.enabled,
        )

    def reached_max_steps(self, step: int) -> bool:
        return self.max_steps is not None and step >= self.max_steps
