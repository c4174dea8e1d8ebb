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
import math
import time
from pathlib import Path
from typing import Any

import torch

from taktstock.checkpoint.checkpointer import Checkpointer
from taktstock.config.schema import Config
from taktstock.data.loaders import Batch
from taktstock.errors import TrainingAborted
from taktstock.tracking.console import ConsoleProgress
from taktstock.training.callbacks import Callbacks, Hook
from taktstock.training.device_stats import DeviceStats
from taktstock.training.eval_loop import run_eval
from taktstock.training.param_groups import lr_record
from taktstock.training.parts import TrainerParts
from taktstock.training.settings import LoopSettings
from taktstock.training.signals import PreemptionHandler
from taktstock.training.state import LoopState
from taktstock.training.step import batch_size_of, count_of, normalize_step_output, to_device
from taktstock.training.tally import StepTally


class Preempted(Exception):
    """Raised after the preemption checkpoint is written."""

    def __init__(self, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(signal_name)
        self.signal_name, self.checkpoint = signal_name, checkpoint


class Trainer:
    """The loop. `cfg` is the resolved config for callbacks; the loop itself reads `settings`."""

    def __init__(self, parts: TrainerParts, settings: LoopSettings, checkpointer: Checkpointer, config: Config) -> None:
        self.p, self.settings, self.checkpointer, self.cfg = parts, settings, checkpointer, config
        self.state = LoopState()
        self.callbacks = Callbacks(parts.callbacks)
        # Running loss/accuracy sums and the first non-finite loss: two device ops per step, read only at sync points.
        self.tally = StepTally(parts.device)
        # Batches come from the loaders as CPU tensors: on a CPU run they only move for channels_last.
        self._move_batches = parts.device.type != "cpu" or settings.channels_last
        self._no_sync = getattr(parts.forward_model, "no_sync", None)
        self._plateau = isinstance(parts.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.preemption = PreemptionHandler()
        self.progress = ConsoleProgress(
            settings.progress, settings.total_steps, parts.dist.is_main, settings.progress_every_minutes, settings.epochs
        )
        self._t0, self._samples = time.perf_counter(), 0
        self.throughput = 0.0
        self.device_stats = (
            DeviceStats(
                parts.device,
                parts.model,
                config.model.params(),
                config.data.block_size if settings.tokens else None,
                settings.tokens,
                parts.dist.world_size,
                config.logging.peak_tflops,
            )
            if config.logging.device_stats
            else None
        )

    # -- main loop ---------------------------------------------------------------------------
    def fit(self) -> LoopState:
        s, accum, n_batches = self.state, self.settings.accumulate, len(self.p.train_batches)
        self.preemption.install()
        self.progress.start(s.step)
        self._callback("on_train_start")
        try:
            while s.stop_reason is None and s.epoch < self.settings.epochs and not self.settings.reached_max_steps(s.step):
                self.p.forward_model.train()
                for batch in self.p.train_batches.epoch(s.epoch, s.batch_in_epoch):
                    weight = self._loss_weight(s.batch_in_epoch, batch)
                    cycle_start = (s.batch_in_epoch // accum) * accum
                    cycle_len = min(accum, n_batches - cycle_start)
                    s.batch_in_epoch += 1
                    boundary = s.batch_in_epoch == cycle_start + cycle_len
                    self._forward_backward(batch, cycle_len, sync_grads=boundary, weight=weight)
                    if boundary:
                        self._optimizer_step()
                        if self._after_step(epoch_done=s.batch_in_epoch == n_batches):
                            break
                else:
                    self._end_epoch()
            if s.stop_reason is None:  # e.g. resumed from the last epoch-end checkpoint of a finished run
                self._decide_stop(early=False, at_epoch_end=True)
                self._validate_if_stale()
                self._checkpoint()
        finally:
            self.progress.stop()
            self.preemption.restore()
        self._callback("on_train_end")
        return s

    def _loss_weight(self, index: int, batch: Batch) -> float:
        """local_n * W / global_n: DDP averages per-rank mean losses, which equals the global mean only
        when every rank holds the same number of samples; the last, unevenly split batch is reweighted."""
        d = self.p.dist
        if not d.enabled:
            return 1.0
        return batch_size_of(batch) * d.world_size / self.p.train_batches.sampler.global_batch_len(index)

    def _forward_backward(self, batch: Batch, cycle_len: int, sync_grads: bool, weight: float = 1.0) -> None:
        p = self.p
        if self._move_batches:
            batch = to_device(batch, p.device, self.settings.channels_last)
        # In DDP only the last micro-step of an accumulation cycle needs the gradient all-reduce.
        ctx = self._no_sync() if (self._no_sync is not None and not sync_grads) else contextlib.nullcontext()
        with ctx:
            with p.autocast():
                loss, out, target = normalize_step_output(p.step_fn(p.forward_model, batch, p.loss_fn), batch)
            # All ranks skip together: a rank leaving out its backward would stall DDP's all-reduce.
            if self.settings.skip_nan and not p.dist.all_ranks(bool(torch.isfinite(loss)), p.device):
                self.state.nan_skips += 1
                return
            # `weight` != 1 only for an unevenly split last global batch of a multi-process run.
            scaled = loss * weight if weight != 1.0 else loss
            if cycle_len > 1:
                scaled = scaled / cycle_len
            (p.scaler.scale(scaled) if p.scaler else scaled).backward()
        n = count_of(batch, out, target)
        self.tally.record(loss, out if self.settings.classification else None, target, n, self.state.step)
        self._samples += n

    def _optimizer_step(self) -> None:
        p, st = self.p, self.settings
        if p.scaler:
            p.scaler.unscale_(p.optimizer)
        if st.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), st.grad_clip_norm, foreach=True)
        if p.scaler:
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            p.optimizer.step()
        self.state.step += 1
        if p.ema is not None:
            p.ema.update(self.state.step)
        if st.histogram_every and self.state.step % st.histogram_every == 0 and p.dist.is_main:
            p.trackers.call("log_histograms", p.model, self.state.step)
        p.optimizer.zero_grad(set_to_none=True)
        # Past a frozen horizon (train.epochs extended on resume) the schedule keeps its final rate.
        if p.scheduler is not None and not self._plateau and (not st.horizon_bound or self.state.step <= st.schedule_horizon):
            p.scheduler.step()

    def _after_step(self, epoch_done: bool) -> bool:
        """Per-step bookkeeping; True when the epoch loop must stop."""
        s, st = self.state, self.settings
        self._callback("on_step_end")
        if s.step % st.log_every == 0:
            self._log_interval()
        if epoch_done:
            # The epoch end (validation, logs, checkpoint) still belongs to this step: `_end_epoch` checkpoints
            # after it, so nothing is logged at a step after that step's checkpoint (no duplicates on resume).
            # A validation due now is the epoch end's.
            return False
        early = bool(st.val_every and s.step % st.val_every == 0 and self._validate())
        self._decide_stop(early, at_epoch_end=False)
        if s.stop_reason is not None:
            self._checkpoint()
            return True
        preempt, clock = self._signals()
        if self.checkpointer.due(s.step, epoch_end=False) or clock or preempt:
            self._checkpoint()
        if preempt:
            raise Preempted(self.preemption.requested, self.checkpointer.last)
        return False

    def _end_epoch(self) -> None:
        s = self.state
        epoch_sums = self.tally.sums()[1]
        record = self.p.dist.sum_sums(epoch_sums).means("train", "", self.settings.classification)
        epoch_sums.reset()
        early = self._validate_if_stale(extra=record)
        self._callback("on_epoch_end")
        s.epoch += 1
        s.batch_in_epoch = 0
        self._decide_stop(early, at_epoch_end=True)
        # Collective in multi-process runs: every rank evaluates it (stop_reason is the same on all ranks).
        preempt, clock = self._signals() if s.stop_reason is None else (False, False)  # a finished run just finishes
        if s.stop_reason is not None or self.checkpointer.due(s.step, epoch_end=True) or clock or preempt:
            self._checkpoint()
        if preempt:
            raise Preempted(self.preemption.requested, self.checkpointer.last)

    def _decide_stop(self, early: bool, at_epoch_end: bool) -> None:
        """The one stop decision (a callback may already have set `state.stop_reason`)."""
        s = self.state
        if s.stop_reason is not None:
            return
        if early:
            s.stop_reason = "early_stopping"
        elif self.settings.reached_max_steps(s.step):
            s.stop_reason = "max_steps"
            if not at_epoch_end:
                self._validate_if_stale()
        elif at_epoch_end and s.epoch >= self.settings.epochs:
            s.stop_reason = "completed"

    # -- validation, logging, checkpoints ------------------------------------------------------
    def _validate_if_stale(self, extra: dict[str, float] | None = None) -> bool:
        """Validate unless this step already was (then just log `extra`); True when early stopping says stop."""
        if self.state.last_val_step != self.state.step:
            return self._validate(extra)
        self._log(extra or {})
        return False

    def _validate(self, extra: dict[str, float] | None = None) -> bool:
        """Validate, log, update best model; True when early stopping says stop."""
        self._check_finite()
        p, s = self.p, self.state
        metrics = dict(extra or {})
        if p.val_batches is not None:
            metrics.update(
                run_eval(
                    p.eval_model, p.val_batches(), p.loss_fn, p.val_metrics, p.device, p.autocast, p.step_fn, self.settings.channels_last
                )
            )
        s.last_val_step = s.step
        self._log(metrics)
        unit = "tokens" if self.settings.tokens else "samples"
        self.progress.validation(s.step, s.epoch, metrics, f"{self.throughput:,.0f} {unit}/s" if self.throughput else "")
        self._callback("on_validation_end", metrics=metrics)
        value = metrics.get(p.monitor.name)
        if value is None:
            return False
        if self._plateau:
            p.scheduler.step(value)
        if p.monitor.update(value, s.step) and self.settings.save_best:
            self.checkpointer.save_best(s.step, p.save_best_weights)  # FSDP: every rank takes part in gathering
        return self.settings.early_stopping and p.monitor.should_stop

    def _log_interval(self) -> None:
        interval = self.tally.sums()[0]
        record = self.p.dist.sum_sums(interval).means("train", "_step", self.settings.classification)
        # The summed loss is non-finite if any loss of the interval was (on any rank): only then search for the step.
        if not math.isfinite(record["train/loss_step"]):
            self._check_finite()
        self.tally.interval_checked()
        interval.reset()
        record.update(lr_record(self.p.optimizer))  # lr, and lr/<group> for each of several parameter groups
        if self.settings.skip_nan:
            record["train/nan_skips"] = self.state.nan_skips
        elapsed = time.perf_counter() - self._t0
        # Samples (language modelling: real tokens) per second of the whole group (ranks process equal shares).
        self.throughput = self._samples * self.p.dist.world_size / elapsed if elapsed > 0 else 0.0
        self._t0, self._samples = time.perf_counter(), 0
        unit = "tokens" if self.settings.tokens else "samples"
        if self.settings.tokens:
            # A timing: with device/* (CUDA only) the values in metrics.jsonl that differ between a resumed run and an uninterrupted one.
            record["train/tokens_per_s"] = round(self.throughput, 1)
        if self.device_stats is not None:
            record.update(self.device_stats.record(self.throughput))
        self._log(record)
        rate = f"{self.throughput:,.0f} {unit}/s"
        self.progress.update(self.state.step, f"loss {record['train/loss_step']:.4f}  {rate}", record, self.state.epoch, rate)

    def _log(self, metrics: dict[str, float]) -> None:
        if not metrics or not self.p.dist.is_main:
            return
        record = {"step": self.state.step, "epoch": self.state.epoch} | metrics
        with self.checkpointer.guard("metrics.jsonl"):
            self.p.metrics_file.write(record)  # first: the local log stays complete whatever trackers do
        self.p.trackers.log_metrics(metrics, self.state.step)

    def _check_finite(self) -> None:
        bad = int(self.p.dist.first_step(self.tally.first_bad_step()))
        if bad >= 0:
            last = self.checkpointer.last
            where = f"; the last good checkpoint is {last}" if last else ""
            raise TrainingAborted(
                f"non-finite loss (NaN/Inf) at step {bad + 1}, epoch {self.state.epoch}{where}. "
                "Lower optim.lr, enable train.grad_clip_norm, or set train.nan_policy=skip."
            )

    def _checkpoint(self) -> None:
        self._check_finite()
        if not self.checkpointer.saved_at(self.state.step):
            self.checkpointer.save(self.state.step)  # a kept best state is written first
        self.checkpointer.write_best()

    def _signals(self) -> tuple[bool, bool]:
        """(preemption requested, checkpoint clock due), agreed by all ranks in one all-reduce.

        SIGTERM/SIGINT may reach ranks at different steps; all ranks stop at the same boundary. The decision
        uses the reduced value only: a signal landing after the all-reduce waits for the next step."""
        preempt, clock = self.p.dist.any_of(self.preemption.requested is not None, self.checkpointer.clock_due())
        if preempt:
            self.preemption.requested = self.preemption.requested or "SIGTERM"
        return preempt, clock

    def _callback(self, hook: Hook, **kwargs: Any) -> None:
        self.callbacks.call(hook, self, **kwargs)
