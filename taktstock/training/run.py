"""`train(config)`: the whole run, top to bottom. Each line calls a builder that lives elsewhere."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taktstock.checkpoint.atomic import atomic_write_text
from taktstock.checkpoint.manager import CheckpointManager, load_checkpoint
from taktstock.config.loader import config_to_dict, load_config, save_config
from taktstock.config.schema import Config
from taktstock.data.loaders import build_train_batches, eval_batches
from taktstock.data.prepare import prepare
from taktstock.errors import CheckpointError, ConfigError, TrainingAborted
from taktstock.metrics.collection import EpochMetrics
from taktstock.models.finetune import finetune_callbacks
from taktstock.run_dir import RunDir
from taktstock.tracking.base import TrackerGroup
from taktstock.tracking.factory import build_trackers
from taktstock.tracking.jsonl import MetricsFile, read_metrics
from taktstock.training import components
from taktstock.training.checks import check_config_fits_data
from taktstock.training.distributed import DistEnv, setup_distributed, teardown_distributed
from taktstock.training.ema import EMA_FILE, build_ema, find_ema
from taktstock.training.monitor import MetricMonitor
from taktstock.training.resume import check_resume_compatible
from taktstock.training.rng import seed_everything
from taktstock.training.trainer import HORIZON_SCHEDULERS, Preempted, Trainer, TrainerParts
from taktstock.utils.process import this_process


@dataclass
class RunResult:
    run_dir: Path
    stop_reason: str
    steps: int
    best: float | None
    final_metrics: dict[str, float]


def train(
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    force: bool = False,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """Train an experiment; with `resume`, continue the run in that directory from its newest valid checkpoint.

    `callbacks` are extra trainer callbacks (after those of train.callbacks), e.g. a tuning trial's pruning reporter.
    """
    if resume is not None:
        run = RunDir(Path(resume))
        config = check_resume_compatible(run, config, overrides, force)
    else:
        config = config if isinstance(config, Config) else load_config(config, overrides)
        run = RunDir(Path(run_dir)) if run_dir else RunDir.new(config.experiment.output_dir, config.experiment.name)
        if run.root.exists() and not run.root.is_dir():
            raise ConfigError(f"--run-dir: {run.root} exists and is not a directory")
    dist = setup_distributed(config)
    try:
        # Under torchrun every rank must use rank 0's run directory (names carry a timestamp).
        run = RunDir(Path(dist.broadcast_object(str(run.root))))
        return _train(config, run, dist, resuming=resume is not None, force=force, callbacks=callbacks)
    finally:
        teardown_distributed(dist)


def _train(config: Config, run: RunDir, dist: DistEnv, resuming: bool, force: bool, callbacks: list[Any] | None = None) -> RunResult:
    device = components.select_device(config, dist)
    seed_everything(config.seed, config.train.deterministic)
    data = prepare(config)
    check_config_fits_data(config, data)
    # Again: a cache miss runs (and imports) more than a hit, and some imports draw from Python's RNG
    # (scikit-learn does); training must start from the same RNG state either way.
    seed_everything(config.seed, config.train.deterministic)
    model, forward_model = components.build_model_for(config, data, device, dist)
    ckpts: Any = CheckpointManager(run.checkpoints, config.checkpoint.keep_last)
    if config.checkpoint.async_write:
        from taktstock.checkpoint.async_writer import AsyncCheckpointManager

        ckpts = AsyncCheckpointManager(ckpts)
    start, ckpt_state = _newest_checkpoint(ckpts, run, dist, force) if resuming else (None, None)
    # Trackers are built (and a tracking server probed) before the run directory is touched.
    trackers = TrackerGroup(build_trackers(config, run, dist) if dist.is_main else [], fail_soft=config.logging.fail_soft)
    if dist.is_main:
        if start is None:  # a fresh run, or a resume that found no valid checkpoint: start clean
            _clear_previous_run(run, announce=not resuming)
        _init_run_dir(run, config, data.preprocessing(), resumed=start is not None)
    metrics_file = MetricsFile(run.metrics)
    ema = build_ema(config, model)  # train.ema: validated, checkpointed (callback state) and saved as best.safetensors
    parts = TrainerParts(
        config=config,
        model=model,
        forward_model=forward_model,
        loss_fn=components.build_loss_for(config, device),
        optimizer=(optimizer := components.build_optimizer_for(config, model, device)),
        scheduler=None,
        scaler=components.grad_scaler_for(config, device),
        train_batches=build_train_batches(*data.split("train"), config, device, dist.rank, dist.world_size),
        val_batches=_val_batches(config, data, dist) if len(data.split("val")[1]) else None,
        val_metrics=EpochMetrics(config, data.num_outputs, device, "val"),
        checkpoints=ckpts,
        trackers=trackers,
        metrics_file=metrics_file,
        monitor=MetricMonitor(config.metrics.monitor, config.metrics.mode, config.early_stopping.min_delta, config.early_stopping.patience),
        device=device,
        autocast=components.autocast_for(config, device),
        step_fn=components.step_fn_for(config),
        dist=dist,
        callbacks=components.callbacks_for(config) + finetune_callbacks(config, model) + ([ema] if ema else []) + list(callbacks or []),
        save_best_weights=(lambda state=None: components.save_weights(ema.module if ema else model, run.best, None if ema else state))
        if dist.is_main
        else None,
    )
    trainer = Trainer(parts)
    if ckpt_state is not None:
        _freeze_schedule_horizon(trainer, ckpt_state)
    parts.scheduler = components.build_scheduler_for(config, optimizer, trainer.schedule_total_steps)
    if ckpt_state is not None:
        trainer.load_checkpoint_state(ckpt_state)
        if trainer.state.stop_reason in ("completed", "max_steps"):
            trainer.state.stop_reason = None  # train.epochs or train.max_steps may have been extended
    if dist.is_main:
        metrics_file.open(truncate_to=ckpt_state["metrics_offset"] if ckpt_state else None)
        trackers.start(config_to_dict(config), ckpt_state["trackers"] if ckpt_state else None, trainer.state.step)
        if start is not None:
            print(f"resuming {run.root} from {start.name} (step {trainer.state.step}, epoch {trainer.state.epoch})", file=sys.stderr)
    status = "failed"
    try:
        trainer.fit()
        _flush_checkpoints(ckpts, trainer)
        status = "completed"
    except Preempted as exc:
        _flush_checkpoints(ckpts, trainer)
        status = "preempted"
        where = exc.checkpoint or "no checkpoint"
        if dist.is_main:
            procs = f" --nproc-per-node {dist.world_size}" if dist.enabled else ""  # multi-node: the same layout as before
            print(f"{exc.signal_name}: saved {where}; resume with: taktstock train --resume {run.root}{procs}", file=sys.stderr)
        raise
    except TrainingAborted:
        status = "aborted"
        raise
    finally:
        if hasattr(ckpts, "wait"):
            ckpts.latest_valid()  # on any exit, a background write finishes before the process may end
        metrics_file.close()
        if dist.is_main:
            run.update_info(
                status=status, ended=time.time(), steps=trainer.state.step, best=parts.monitor.best, nan_skips=trainer.state.nan_skips
            )
            if trainer.state.nan_skips:
                print(
                    f"warning: skipped {trainer.state.nan_skips} batch(es) with a non-finite loss (train.nan_policy=skip)", file=sys.stderr
                )
            if status != "completed":
                trackers.finish("FAILED" if status in ("failed", "aborted") else "KILLED")
    outcome = "FAILED"  # writing the final weights or plots can still fail
    try:
        result = _finish(config, run, trainer, parts, dist)
        if dist.is_main:
            trackers.call("log_run_outputs", run, result.final_metrics)  # config, plots, best model
        outcome = "FINISHED"
    finally:
        if dist.is_main:
            trackers.finish(outcome)
    return result


def _finish(config: Config, run: RunDir, trainer: Trainer, parts: TrainerParts, dist: DistEnv) -> RunResult:
    """Final weights, plots and the summary; only rank 0 writes."""
    records = read_metrics(run.metrics) if dist.is_main and run.metrics.exists() else []
    final = {k: v for r in records if "step" in r for k, v in r.items() if k.startswith("val/")}
    dicts = trainer.full_state_dicts()  # FSDP: every rank takes part in gathering the weights
    if dist.is_main:
        components.save_weights(parts.model, run.model, dicts[0] if dicts else None)
        ema = find_ema(parts.callbacks)
        if ema is not None:
            components.save_weights(ema.module, run.root / EMA_FILE)
        if not run.best.exists():
            components.save_weights(ema.module if ema else parts.model, run.best, None if ema else (dicts[0] if dicts else None))
        if config.logging.plots and records:
            from taktstock.tracking.plots import learning_curves

            run.plots.mkdir(exist_ok=True)
            learning_curves(records, run.plots / "learning_curves.png", config.experiment.name)
        from taktstock.tracking.console import print_table

        summary = {"run_dir": str(run.root), "steps": trainer.state.step, "stopped": trainer.state.stop_reason or "", **final}
        if parts.monitor.best is not None:
            summary[f"best {parts.monitor.name}"] = parts.monitor.best
        if trainer.throughput:
            summary["samples/s"] = round(trainer.throughput)
        print_table("training summary", summary)
    return RunResult(run.root, trainer.state.stop_reason or "completed", trainer.state.step, parts.monitor.best, final)


def _flush_checkpoints(ckpts: Any, trainer: Trainer) -> None:
    """Wait for a background checkpoint write (checkpoint.async_write); its failure aborts the run."""
    wait = getattr(ckpts, "wait", None)
    if wait is None:
        return
    try:
        wait()
    except OSError as exc:
        kept = ckpts.latest_valid()
        raise TrainingAborted(
            f"could not write checkpoint ({exc.strerror or exc}); the previous checkpoint is intact: {kept.path if kept else 'none'}"
        ) from None


def _newest_checkpoint(ckpts: CheckpointManager, run: RunDir, dist: DistEnv, force: bool) -> tuple[Path | None, dict[str, Any] | None]:
    if not run.root.is_dir():
        raise ConfigError(f"--resume: run directory not found: {run.root}")
    if dist.is_main:
        removed = ckpts.prepare()
        if removed:
            print(f"removed {len(removed)} partial file(s) of an interrupted checkpoint write", file=sys.stderr)
    # Rank 0 picks the checkpoint for everyone: ranks must not disagree while a scan races a write.
    info = dist.broadcast_object(ckpts.latest_valid() if dist.is_main else None)
    if info is None:
        if dist.is_main:
            print(f"no valid checkpoint in {run.checkpoints}: starting {run.root} from the beginning", file=sys.stderr)
        return None, None
    state = load_checkpoint(info.path)
    missing = [k for k in ("format", "model", "optimizer", "rng", "loop", "sums", "monitor", "metrics_offset") if k not in state]
    if missing or state["format"] != 1:
        raise CheckpointError(f"{info.path} is not a taktstock checkpoint of a supported format (missing: {', '.join(missing) or 'none'})")
    world = state.get("world_size", 1)
    if world != dist.world_size and not force:
        raise ConfigError(
            f"--resume: {info.path.name} was written by {world} process(es), this run has {dist.world_size}; "
            "exact resume needs the same world size (use --force to continue anyway)"
        )
    return info.path, state


def _freeze_schedule_horizon(trainer: Trainer, ckpt_state: dict[str, Any]) -> None:
    """Keep the LR schedule of the original run when train.epochs/max_steps change on resume."""
    frozen = ckpt_state.get("schedule_total_steps")
    if frozen is None:
        return
    now, name = trainer.total_steps(), trainer.cfg.scheduler.name
    trainer.schedule_total_steps = frozen
    if now != frozen and name in HORIZON_SCHEDULERS:
        beyond = f"; the {now - frozen} step(s) beyond it keep the final learning rate" if now > frozen else ""
        print(
            f"note: the run now has {now} steps, the '{name}' learning-rate schedule keeps its original horizon of {frozen} steps{beyond}",
            file=sys.stderr,
        )


def _clear_previous_run(run: RunDir, announce: bool = True) -> None:
    """A fresh run in the directory of an earlier one replaces its results.

    Left in place, the old run's higher-numbered checkpoints would be kept over the new ones by
    pruning and picked up by a later --resume, and its metrics and event files would mix with the
    new ones. Only directories that taktstock wrote (they have run.json) are touched.
    """
    if not run.info.is_file():
        return
    import shutil

    if announce:
        print(f"note: {run.root} held an earlier run; replacing its results (use --resume {run.root} to continue it)", file=sys.stderr)
    # A resume that found no valid checkpoint keeps the (damaged) checkpoint files for inspection.
    for path in (run.checkpoints, run.eval_dir, run.tensorboard, run.plots) if announce else (run.eval_dir, run.tensorboard, run.plots):
        shutil.rmtree(path, ignore_errors=True)
    for path in (run.metrics, run.model, run.best, run.info):
        path.unlink(missing_ok=True)


def _init_run_dir(run: RunDir, config: Config, preprocessing: dict[str, Any], resumed: bool) -> None:
    import json

    run.root.mkdir(parents=True, exist_ok=True)
    run.checkpoints.mkdir(exist_ok=True)
    save_config(config, run.config)
    atomic_write_text(run.preprocessing, json.dumps(preprocessing))
    fields: dict[str, Any] = {
        "name": config.experiment.name,
        "status": "running",
        "monitor": config.metrics.monitor,
        "mode": config.metrics.mode,
        # Lets `taktstock runs` tell a live run from one killed before it could record its end.
        "process": this_process(),
    }
    if not resumed:
        fields["started"] = time.time()
    run.update_info(**fields)


def _val_batches(config: Config, data: Any, dist: DistEnv) -> Any:
    x, y = data.split("val")
    size = config.train.eval_batch_size or config.train.batch_size
    return lambda: eval_batches(x, y, size, dist.rank, dist.world_size)
