"""The training loop. It stays short: checkpointing, tracking, monitoring, metrics and data order
live in their own modules and are called at a few clear points.

Exact resume rests on three rules kept here:
  * checkpoints are taken only at optimizer-step boundaries;
  * batch order and augmentation are pure functions of (seed, epoch, index), so the loop resumes
    by slicing, never by replaying;
  * everything else that evolves (weights, optimizer, scheduler, scaler, RNGs, running sums,
    monitor, log offset) goes into the checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taktstock.checkpoint.manager import CheckpointManager
from taktstock.config.schema import Config
from taktstock.data.loaders import Batch, TrainBatches
from taktstock.errors import TrainingAborted
from taktstock.evaluation.loop import run_eval
from taktstock.metrics.collection import EpochMetrics, class_scores
from taktstock.tracking.base import TrackerGroup
from taktstock.tracking.console import ConsoleProgress
from taktstock.tracking.jsonl import MetricsFile
from taktstock.training.distributed import DistEnv
from taktstock.training.monitor import MetricMonitor
from taktstock.training.rng import capture_rng, restore_rng
from taktstock.training.signals import PreemptionHandler
from taktstock.training.state import LoopState, Sums
from taktstock.training.step import StepFn, batch_size_of, normalize_step_output, to_device


class Preempted(Exception):
    """Raised after the preemption checkpoint is written."""

    def __init__(self, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(signal_name)
        self.signal_name, self.checkpoint = signal_name, checkpoint


@dataclass
class TrainerParts:
    """The collaborators the loop is assembled from (built in `training.run`)."""

    config: Config
    model: nn.Module  # the plain module: state dicts never carry compile/DDP prefixes
    forward_model: nn.Module  # what is called: possibly compiled and/or DDP-wrapped
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    train_batches: TrainBatches
    val_batches: Callable[[], Any] | None
    val_metrics: EpochMetrics
    checkpoints: CheckpointManager
    trackers: TrackerGroup
    metrics_file: MetricsFile
    monitor: MetricMonitor
    device: torch.device
    autocast: Callable[[], Any]
    step_fn: StepFn
    dist: DistEnv = field(default_factory=DistEnv)
    callbacks: list[Any] = field(default_factory=list)
    save_best_weights: Callable[[], None] | None = None
    extra_state: Callable[[], dict[str, Any]] = dict


class Trainer:
    def __init__(self, parts: TrainerParts) -> None:
        self.p = parts
        self.cfg = parts.config
        self.state = LoopState()
        self.classification = parts.config.task == "classification"
        # Interval and epoch sums are the two lanes of one accumulator: one in-place op per quantity and
        # step updates both (the per-step bookkeeping is ~3 small ops instead of ~10).
        self._lanes = Sums(*(torch.zeros(2, dtype=t) for t in (torch.float64, torch.int64, torch.int64))).to(parts.device)
        self.interval = Sums(self._lanes.loss[0], self._lanes.correct[0], self._lanes.count[0])
        self.epoch_sums = Sums(self._lanes.loss[1], self._lanes.correct[1], self._lanes.count[1])
        # Step of the first non-finite loss, kept on the device and checked only at sync points.
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=parts.device)
        self.preemption = PreemptionHandler()
        self.last_checkpoint: Path | None = None
        self.progress = ConsoleProgress(self.cfg.logging.progress, self.total_steps(), parts.dist.is_main)
        self._t0, self._samples = time.perf_counter(), 0
        self.throughput = 0.0

    # -- sizes -------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        n, k = len(self.p.train_batches), self.cfg.train.accumulate_grad_batches
        return -(-n // k)

    def total_steps(self) -> int:
        total = self.steps_per_epoch() * self.cfg.train.epochs
        return min(total, self.cfg.train.max_steps) if self.cfg.train.max_steps else total

    # -- main loop ---------------------------------------------------------------------------
    def fit(self) -> LoopState:
        s, accum = self.state, self.cfg.train.accumulate_grad_batches
        n_batches = len(self.p.train_batches)
        self.preemption.install()
        self.progress.start(s.step)
        self._callback("on_train_start")
        try:
            while s.stop_reason is None and s.epoch < self.cfg.train.epochs and not self._reached_max_steps():
                self.p.forward_model.train()
                for batch in self.p.train_batches.epoch(s.epoch, s.batch_in_epoch):
                    cycle_start = (s.batch_in_epoch // accum) * accum
                    cycle_len = min(accum, n_batches - cycle_start)
                    s.batch_in_epoch += 1
                    boundary = s.batch_in_epoch == cycle_start + cycle_len
                    self._forward_backward(batch, cycle_len, sync_grads=boundary)
                    if boundary:
                        self._optimizer_step()
                        if self._after_step(epoch_done=s.batch_in_epoch == n_batches):
                            break
                else:
                    self._end_epoch()
            if s.stop_reason is None:  # e.g. resumed from the last epoch-end checkpoint of a finished run
                s.stop_reason = "max_steps" if self._reached_max_steps() else "completed"
                if s.last_val_step != s.step:
                    self._validate()
                self._checkpoint()
        finally:
            self.progress.stop()
            self.preemption.restore()
        self._callback("on_train_end")
        return s

    def _forward_backward(self, batch: Batch, cycle_len: int, sync_grads: bool) -> None:
        p = self.p
        batch = to_device(batch, p.device, self.cfg.train.channels_last)
        # In DDP only the last micro-step of an accumulation cycle needs the gradient all-reduce.
        no_sync = getattr(p.forward_model, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync_grads) else contextlib.nullcontext()
        with ctx:
            with p.autocast():
                loss, out, target = normalize_step_output(p.step_fn(p.forward_model, batch, p.loss_fn), batch)
            if self.cfg.train.nan_policy == "skip" and not bool(torch.isfinite(loss)):
                self.state.nan_skips += 1
                return
            scaled = loss / cycle_len if cycle_len > 1 else loss
            (p.scaler.scale(scaled) if p.scaler else scaled).backward()
        n = batch_size_of(batch)
        correct = None
        if self.classification and out is not None and target is not None:
            correct = (class_scores(out.detach()).argmax(-1) == target).sum()
        self._lanes.add(loss, correct, n)  # interval and epoch sums at once
        self._samples += n
        keep = torch.isfinite(loss.detach()) | (self.first_bad_step >= 0)
        self.first_bad_step = torch.where(keep, self.first_bad_step, self.state.step)

    def _optimizer_step(self) -> None:
        p, clip = self.p, self.cfg.train.grad_clip_norm
        if p.scaler:
            p.scaler.unscale_(p.optimizer)
        if clip:
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), clip, foreach=True)
        if p.scaler:
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            p.optimizer.step()
        self.state.step += 1
        hist = self.cfg.logging.histogram_every_n_steps
        if hist and self.state.step % hist == 0 and p.dist.is_main:
            p.trackers.call("log_histograms", p.model, self.state.step)
        p.optimizer.zero_grad(set_to_none=True)
        if p.scheduler is not None and not isinstance(p.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            p.scheduler.step()

    def _after_step(self, epoch_done: bool) -> bool:
        """Per-step bookkeeping; True when the epoch loop must stop."""
        s, cfg = self.state, self.cfg
        self._callback("on_step_end")
        if s.step % cfg.train.log_every_n_steps == 0:
            self._log_interval()
        if cfg.train.val_every_n_steps and s.step % cfg.train.val_every_n_steps == 0 and not epoch_done and self._validate():
            s.stop_reason = "early_stopping"
        if s.stop_reason is None and self._reached_max_steps() and not epoch_done:
            s.stop_reason = "max_steps"
            if s.last_val_step != s.step:
                self._validate()
        every = cfg.checkpoint.every_n_steps
        periodic = every is not None and s.step % every == 0 and not (epoch_done and cfg.checkpoint.every_epoch)
        if s.stop_reason is not None or periodic:
            self._checkpoint()
        if s.stop_reason is not None:
            return True
        if self.preemption.requested:
            if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{s.step:08d}.pt"):
                self._checkpoint()
            raise Preempted(self.preemption.requested, self.last_checkpoint)
        return False

    def _end_epoch(self) -> None:
        s = self.state
        record = self.epoch_sums.means("train", "", self.classification)
        self.epoch_sums.reset()
        stop = False
        if s.last_val_step != s.step:
            stop = self._validate(extra=record)
        else:
            self._log(record)
        self._callback("on_epoch_end")
        s.epoch += 1
        s.batch_in_epoch = 0
        if stop:
            s.stop_reason = "early_stopping"
        elif self._reached_max_steps():
            s.stop_reason = "max_steps"
        elif s.epoch >= self.cfg.train.epochs:
            s.stop_reason = "completed"
        if self.cfg.checkpoint.every_epoch or s.stop_reason is not None:
            self._checkpoint()
        if self.preemption.requested:
            raise Preempted(self.preemption.requested, self.last_checkpoint)

    # -- validation, logging, checkpoints ------------------------------------------------------
    def _validate(self, extra: dict[str, float] | None = None) -> bool:
        """Validate, log, update best model; True when early stopping says stop."""
        self._check_finite()
        p, s = self.p, self.state
        metrics = dict(extra or {})
        if p.val_batches is not None:
            metrics.update(
                run_eval(
                    p.forward_model,
                    p.val_batches(),
                    p.loss_fn,
                    p.val_metrics,
                    p.device,
                    p.autocast,
                    p.step_fn,
                    self.cfg.train.channels_last,
                )
            )
        s.last_val_step = s.step
        self._log(metrics)
        self._callback("on_validation_end", metrics=metrics)
        value = metrics.get(p.monitor.name)
        if value is None:
            return False
        if isinstance(p.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            p.scheduler.step(value)
        if p.monitor.update(value, s.step) and p.dist.is_main and self.cfg.checkpoint.save_best:
            if p.save_best_weights is not None:
                p.save_best_weights()
            p.checkpoints.save_best(self.checkpoint_state(), s.step)
        return self.cfg.early_stopping.enabled and p.monitor.should_stop

    def _log_interval(self) -> None:
        self._check_finite()
        record = self.interval.means("train", "_step", self.classification)
        self.interval.reset()
        record["lr"] = self.p.optimizer.param_groups[0]["lr"]
        elapsed = time.perf_counter() - self._t0
        self.throughput = self._samples / elapsed if elapsed > 0 else 0.0
        self._t0, self._samples = time.perf_counter(), 0
        self._log(record)
        self.progress.update(self.state.step, f"loss {record['train/loss_step']:.4f}  {self.throughput:,.0f} samples/s")

    def _log(self, metrics: dict[str, float]) -> None:
        if not metrics or not self.p.dist.is_main:
            return
        record = {"step": self.state.step, "epoch": self.state.epoch} | metrics
        self.p.metrics_file.write(record)  # first: the local log stays complete whatever trackers do
        self.p.trackers.log_metrics(metrics, self.state.step)

    def _check_finite(self) -> None:
        bad = int(self.first_bad_step)
        if bad >= 0:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingAborted(
                f"non-finite loss (NaN/Inf) at step {bad + 1}, epoch {self.state.epoch}{where}. "
                "Lower optim.lr, enable train.grad_clip_norm, or set train.nan_policy=skip."
            )

    def _checkpoint(self) -> None:
        self._check_finite()
        if not self.p.dist.is_main:
            return
        try:
            self.last_checkpoint = self.p.checkpoints.save(self.checkpoint_state(), self.state.step)
        except OSError as exc:
            kept = self.p.checkpoints.latest_valid()
            raise TrainingAborted(
                f"could not write checkpoint at step {self.state.step} ({exc.strerror or exc}); "
                f"the previous checkpoint is intact: {kept.path if kept else 'none'}"
            ) from None

    def _reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.state.step >= self.cfg.train.max_steps

    def _callback(self, hook: str, **kwargs: Any) -> None:
        for cb in self.p.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, **kwargs)

    # -- checkpoint state ----------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything the continuation depends on, as tensors and plain data only."""
        p = self.p
        return {
            "format": 1,
            "model": p.model.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
            "scaler": p.scaler.state_dict() if p.scaler is not None else None,
            "rng": capture_rng(),
            "loop": self.state.state_dict(),
            "sums": {"interval": self.interval.state_dict(), "epoch": self.epoch_sums.state_dict()},
            "monitor": p.monitor.state_dict(),
            "trackers": p.trackers.state(),
            "metrics_offset": p.metrics_file.offset() if p.dist.is_main else 0,
            "world_size": p.dist.world_size,
        } | p.extra_state()

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        p = self.p
        p.model.load_state_dict(ckpt["model"])
        p.optimizer.load_state_dict(ckpt["optimizer"])
        if p.scheduler is not None and ckpt.get("scheduler") is not None:
            p.scheduler.load_state_dict(ckpt["scheduler"])
        if p.scaler is not None and ckpt.get("scaler") is not None:
            p.scaler.load_state_dict(ckpt["scaler"])
        self.state.load_state_dict(ckpt["loop"])
        self.interval.load_state_dict(ckpt["sums"]["interval"])
        self.epoch_sums.load_state_dict(ckpt["sums"]["epoch"])
        p.monitor.load_state_dict(ckpt["monitor"])
        restore_rng(ckpt["rng"])
