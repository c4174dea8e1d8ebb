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
import sys
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
from taktstock.metrics.collection import EpochMetrics
from taktstock.tracking.base import TrackerGroup
from taktstock.tracking.console import ConsoleProgress
from taktstock.tracking.jsonl import MetricsFile
from taktstock.training.distributed import DistEnv, full_state_dicts, is_sharded, load_full_state_dicts
from taktstock.training.monitor import MetricMonitor
from taktstock.training.param_groups import lr_record
from taktstock.training.rng import capture_rng, restore_rng
from taktstock.training.signals import PreemptionHandler
from taktstock.training.state import LoopState, Sums
from taktstock.training.step import StepFn, batch_size_of, normalize_step_output, to_device
from taktstock.training.tally import StepTally

# Schedulers whose shape depends on the total number of steps. Their horizon is frozen at the first
# run's value (stored in checkpoints), so extending train.epochs/max_steps on resume continues the
# same curve; steps past the horizon keep its final learning rate.
HORIZON_SCHEDULERS = ("cosine", "onecycle", "warmup_cosine")


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
    save_best_weights: Callable[[dict[str, Any] | None], None] | None = None  # gets gathered FSDP weights, else None
    extra_state: Callable[[], dict[str, Any]] = dict


class Trainer:
    def __init__(self, parts: TrainerParts) -> None:
        self.p = parts
        self.cfg = parts.config
        self.state = LoopState()
        self.classification = parts.config.task == "classification"
        # Running loss/accuracy sums and the first non-finite loss: two device ops per step, read only at sync points.
        self.tally = StepTally(parts.device)
        # Per-step decisions fixed for the run, taken once (at ~1 ms per step every attribute chain counts).
        # Batches come from the loaders as CPU tensors: on a CPU run they only move for channels_last.
        self._move_batches = parts.device.type != "cpu" or parts.config.train.channels_last
        self._no_sync = getattr(parts.forward_model, "no_sync", None)
        self._skip_nan = parts.config.train.nan_policy == "skip"
        self.preemption = PreemptionHandler()
        self.last_checkpoint: Path | None = None
        self.progress = ConsoleProgress(self.cfg.logging.progress, self.total_steps(), parts.dist.is_main)
        self._t0, self._samples = time.perf_counter(), 0
        self.throughput = 0.0
        self.schedule_total_steps = self.total_steps()  # the LR schedule's horizon; from the checkpoint on resume

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
                s.stop_reason = "max_steps" if self._reached_max_steps() else "completed"
                if s.last_val_step != s.step:
                    self._validate()
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
            batch = to_device(batch, p.device, self.cfg.train.channels_last)
        # In DDP only the last micro-step of an accumulation cycle needs the gradient all-reduce.
        ctx = self._no_sync() if (self._no_sync is not None and not sync_grads) else contextlib.nullcontext()
        with ctx:
            with p.autocast():
                loss, out, target = normalize_step_output(p.step_fn(p.forward_model, batch, p.loss_fn), batch)
            # All ranks skip together: a rank leaving out its backward would stall DDP's all-reduce.
            if self._skip_nan and not p.dist.all_ranks(bool(torch.isfinite(loss)), p.device):
                self.state.nan_skips += 1
                return
            # `weight` != 1 only for an unevenly split last global batch of a multi-process run.
            scaled = loss * weight if weight != 1.0 else loss
            if cycle_len > 1:
                scaled = scaled / cycle_len
            (p.scaler.scale(scaled) if p.scaler else scaled).backward()
        n = batch_size_of(batch)
        self.tally.record(loss, out if self.classification else None, target, n, self.state.step)
        self._samples += n

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
        if p.scheduler is not None and not isinstance(p.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and self._within_horizon():
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
        if epoch_done:
            # The epoch end (validation, logs) still belongs to this step: `_end_epoch` checkpoints after it,
            # so nothing is logged at a step after that step's checkpoint (no duplicates on resume).
            return False
        if s.stop_reason is not None or self._periodic_due():
            self._checkpoint()
        if s.stop_reason is not None:
            return True
        if self._preemption_requested():
            if not self._checkpointed_now():
                self._checkpoint()
            raise Preempted(self.preemption.requested, self.last_checkpoint)
        return False

    def _within_horizon(self) -> bool:
        return self.cfg.scheduler.name not in HORIZON_SCHEDULERS or self.state.step <= self.schedule_total_steps

    def _periodic_due(self) -> bool:
        every = self.cfg.checkpoint.every_n_steps
        return every is not None and self.state.step % every == 0

    def _checkpointed_now(self) -> bool:
        return self.last_checkpoint is not None and self.last_checkpoint.name == f"step-{self.state.step:08d}.pt"

    def _end_epoch(self) -> None:
        s = self.state
        epoch_sums = self.tally.sums()[1]
        record = self.p.dist.sum_sums(epoch_sums).means("train", "", self.classification)
        epoch_sums.reset()
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
        # Collective in multi-process runs: every rank evaluates it (stop_reason is the same on all ranks).
        preempt = s.stop_reason is None and self._preemption_requested()  # a finished run just finishes
        if self.cfg.checkpoint.every_epoch or s.stop_reason is not None or self._periodic_due() or preempt:
            self._checkpoint()
        if preempt:
            raise Preempted(self.preemption.requested, self.last_checkpoint)

    # -- validation, logging, checkpoints ------------------------------------------------------
    def _validate(self, extra: dict[str, float] | None = None) -> bool:
        """Validate, log, update best model; True when early stopping says stop."""
        self._check_finite()
        p, s = self.p, self.state
        metrics = dict(extra or {})
        # A callback may supply the weights to validate (train.ema: the averaged model).
        eval_model = next((cb.eval_model() for cb in p.callbacks if hasattr(cb, "eval_model")), p.forward_model)
        if p.val_batches is not None:
            metrics.update(
                run_eval(
                    eval_model,
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
        if p.monitor.update(value, s.step) and self.cfg.checkpoint.save_best:
            dicts = self.full_state_dicts()  # FSDP: gathered by every rank

            def write_best() -> None:
                if p.save_best_weights is not None:
                    p.save_best_weights(dicts[0] if dicts else None)
                p.checkpoints.save_best(self.checkpoint_state(dicts=dicts), s.step)

            self._save_on_main("the best checkpoint", write_best)
        return self.cfg.early_stopping.enabled and p.monitor.should_stop

    def _log_interval(self) -> None:
        interval = self.tally.sums()[0]
        record = self.p.dist.sum_sums(interval).means("train", "_step", self.classification)
        # The summed loss is non-finite if any loss of the interval was (on any rank): only then search for the step.
        if not math.isfinite(record["train/loss_step"]):
            self._check_finite()
        self.tally.interval_checked()
        interval.reset()
        record.update(lr_record(self.p.optimizer))  # lr, and lr/<group> for each of several parameter groups
        if self.cfg.train.nan_policy == "skip":
            record["train/nan_skips"] = self.state.nan_skips
        elapsed = time.perf_counter() - self._t0
        # Samples per second of the whole group (ranks process equal shares).
        self.throughput = self._samples * self.p.dist.world_size / elapsed if elapsed > 0 else 0.0
        self._t0, self._samples = time.perf_counter(), 0
        self._log(record)
        self.progress.update(self.state.step, f"loss {record['train/loss_step']:.4f}  {self.throughput:,.0f} samples/s")

    def _log(self, metrics: dict[str, float]) -> None:
        if not metrics or not self.p.dist.is_main:
            return
        record = {"step": self.state.step, "epoch": self.state.epoch} | metrics
        with self._write_guard("metrics.jsonl"):
            self.p.metrics_file.write(record)  # first: the local log stays complete whatever trackers do
        self.p.trackers.log_metrics(metrics, self.state.step)

    def _check_finite(self) -> None:
        bad = int(self.p.dist.first_step(self.tally.first_bad_step()))
        if bad >= 0:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingAborted(
                f"non-finite loss (NaN/Inf) at step {bad + 1}, epoch {self.state.epoch}{where}. "
                "Lower optim.lr, enable train.grad_clip_norm, or set train.nan_policy=skip."
            )

    def _checkpoint(self) -> None:
        self._check_finite()
        p = self.p
        # Every rank's generators (dropout differs per rank) and running sums, for an exact W-process resume.
        ranks = p.dist.gather_object(self._rank_state()) if p.dist.enabled else None
        dicts = self.full_state_dicts()

        def write() -> None:
            self.last_checkpoint = p.checkpoints.save(self.checkpoint_state(ranks, dicts), self.state.step)

        self._save_on_main(f"checkpoint at step {self.state.step}", write)
        if not p.dist.is_main:
            self.last_checkpoint = p.checkpoints.dir / f"step-{self.state.step:08d}.pt"

    def _save_on_main(self, what: str, write: Callable[[], None]) -> None:
        """Rank 0 writes; a failure stops every rank (the all-reduce doubles as the save barrier)."""
        error = None
        if self.p.dist.is_main:
            try:
                with self._write_guard(what):
                    write()
            except TrainingAborted as exc:
                error = exc
        if not self.p.dist.all_ranks(error is None, self.p.device):
            raise error or TrainingAborted(f"rank 0 could not write the {what}")

    @contextlib.contextmanager
    def _write_guard(self, what: str) -> Any:
        """A failed write (disk full, I/O error) stops the run; the previous checkpoint stays usable."""
        try:
            yield
        except OSError as exc:
            kept = self.p.checkpoints.latest_valid()
            where = f"the previous checkpoint is intact: {kept.path}" if kept else "no earlier checkpoint exists"
            raise TrainingAborted(
                f"could not write {what} ({exc.strerror or exc}); {where}. "
                f"Free space or fix the file system, then resume with: taktstock train --resume {self.p.checkpoints.dir.parent}"
            ) from None

    def _preemption_requested(self) -> bool:
        """SIGTERM/SIGINT may reach ranks at different steps; all ranks stop at the same boundary."""
        p = self.p
        # Decide on the reduced value only: a signal landing after the all-reduce waits for the next step.
        if not p.dist.any_rank(self.preemption.requested is not None, p.device):
            return False
        self.preemption.requested = self.preemption.requested or "SIGTERM"
        return True

    def _reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.state.step >= self.cfg.train.max_steps

    def _callback(self, hook: str, **kwargs: Any) -> None:
        for cb in self.p.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, **kwargs)

    # -- checkpoint state ----------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        return {"rng": capture_rng(), "sums": self.tally.state_dict()}

    def full_state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(model, optimizer) state gathered from FSDP shards (a collective); None when not sharded."""
        if not is_sharded(self.cfg, self.p.dist):
            return None
        return full_state_dicts(self.p.model, self.p.optimizer)

    def checkpoint_state(
        self, ranks: list[Any] | None = None, dicts: tuple[dict[str, Any], dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Everything the continuation depends on, as tensors and plain data only."""
        p = self.p
        model_state, optim_state = dicts or (p.model.state_dict(), p.optimizer.state_dict())
        return {
            "format": 1,
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
            "scaler": p.scaler.state_dict() if p.scaler is not None else None,
            "rng": capture_rng(),
            "loop": self.state.state_dict(),
            "sums": self.tally.state_dict(),
            "monitor": p.monitor.state_dict(),
            "trackers": p.trackers.state(),
            "metrics_offset": p.metrics_file.offset() if p.dist.is_main else 0,
            "world_size": p.dist.world_size,
            "schedule_total_steps": self.schedule_total_steps,
            # User callbacks with state take part like any other component (plain data only).
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in p.callbacks],
            "num_threads": torch.get_num_threads(),
            "ranks": ranks,  # per-rank state of multi-process runs, in rank order
        } | p.extra_state()

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        p = self.p
        if is_sharded(self.cfg, p.dist):
            load_full_state_dicts(p.model, p.optimizer, ckpt["model"], ckpt["optimizer"])
        else:
            p.model.load_state_dict(ckpt["model"])
            p.optimizer.load_state_dict(ckpt["optimizer"])
        if p.scheduler is not None and ckpt.get("scheduler") is not None:
            p.scheduler.load_state_dict(ckpt["scheduler"])
        if p.scaler is not None and ckpt.get("scaler") is not None:
            p.scaler.load_state_dict(ckpt["scaler"])
        self.state.load_state_dict(ckpt["loop"])
        ranks = ckpt.get("ranks") or [{"rng": ckpt["rng"], "sums": ckpt["sums"]}]
        if len(ranks) == p.dist.world_size:
            mine = ranks[p.dist.rank]
        else:  # a forced resume with another world size: rank 0 carries the sums of all former ranks
            total = {k: {f: sum(r["sums"][k][f] for r in ranks) for f in ("loss", "correct", "count")} for k in ("interval", "epoch")}
            empty = {k: Sums().state_dict() for k in ("interval", "epoch")}
            mine = {"rng": ckpt["rng"], "sums": total if p.dist.is_main else empty}
        self.tally.load_state_dict(mine["sums"])
        p.monitor.load_state_dict(ckpt["monitor"])
        for cb, state in zip(p.callbacks, ckpt.get("callbacks") or [], strict=False):
            if state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state)
        restore_rng(mine["rng"])
        threads = ckpt.get("num_threads")
        if threads is not None and threads != torch.get_num_threads():
            print(
                f"warning: the checkpoint was written with {threads} intra-op threads, this process uses "
                f"{torch.get_num_threads()}; CPU results can differ in the last bits (set OMP_NUM_THREADS={threads} for an exact resume)",
                file=sys.stderr,
            )
