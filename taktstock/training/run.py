"""`train(config)`: the whole run, top to bottom. Each line calls a builder that lives elsewhere."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taktstock.checkpoint.manager import CheckpointManager, load_checkpoint
from taktstock.config.loader import config_to_dict, load_config, save_config
from taktstock.config.schema import Config
from taktstock.data.loaders import build_train_batches, eval_batches
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError, TrainingAborted
from taktstock.metrics.collection import EpochMetrics
from taktstock.run_dir import RunDir
from taktstock.tracking.base import TrackerGroup
from taktstock.tracking.factory import build_trackers
from taktstock.tracking.jsonl import MetricsFile, read_metrics
from taktstock.training import components
from taktstock.training.distributed import DistEnv, setup_distributed, teardown_distributed
from taktstock.training.monitor import MetricMonitor
from taktstock.training.resume import check_resume_compatible
from taktstock.training.rng import seed_everything
from taktstock.training.trainer import Preempted, Trainer, TrainerParts


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
    dist = setup_distributed(config)
    try:
        return _train(config, run, dist, resuming=resume is not None, force=force, callbacks=callbacks)
    finally:
        teardown_distributed(dist)


def _train(config: Config, run: RunDir, dist: DistEnv, resuming: bool, force: bool, callbacks: list[Any] | None = None) -> RunResult:
    device = components.select_device(config, dist)
    seed_everything(config.seed, config.train.deterministic)
    data = prepare(config)
    model, forward_model = components.build_model_for(config, data, device, dist)
    ckpts = CheckpointManager(run.checkpoints, config.checkpoint.keep_last)
    start, ckpt_state = _newest_checkpoint(ckpts, run, dist, force) if resuming else (None, None)
    if dist.is_main:
        _init_run_dir(run, config, data.preprocessing(), resumed=start is not None)
    trackers = TrackerGroup(build_trackers(config, run, dist) if dist.is_main else [])
    metrics_file = MetricsFile(run.metrics)
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
        callbacks=components.callbacks_for(config) + list(callbacks or []),
        save_best_weights=(lambda: components.save_weights(model, run.best)) if dist.is_main else None,
    )
    trainer = Trainer(parts)
    parts.scheduler = components.build_scheduler_for(config, optimizer, trainer.total_steps())
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
        status = "completed"
    except Preempted as exc:
        status = "preempted"
        where = exc.checkpoint or "no checkpoint"
        print(f"{exc.signal_name}: saved {where}; resume with: taktstock train --resume {run.root}", file=sys.stderr)
        raise
    except TrainingAborted:
        status = "aborted"
        raise
    finally:
        metrics_file.close()
        if dist.is_main:
            run.update_info(status=status, ended=time.time(), steps=trainer.state.step, best=parts.monitor.best)
            trackers.finish("FINISHED" if status == "completed" else "FAILED" if status in ("failed", "aborted") else "KILLED")
    return _finish(config, run, trainer, parts, dist)


def _finish(config: Config, run: RunDir, trainer: Trainer, parts: TrainerParts, dist: DistEnv) -> RunResult:
    """Final weights, plots and the summary; only rank 0 writes."""
    records = read_metrics(run.metrics) if dist.is_main and run.metrics.exists() else []
    final = {k: v for r in records if "step" in r for k, v in r.items() if k.startswith("val/")}
    if dist.is_main:
        components.save_weights(parts.model, run.model)
        if not run.best.exists():
            components.save_weights(parts.model, run.best)
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


def _newest_checkpoint(ckpts: CheckpointManager, run: RunDir, dist: DistEnv, force: bool) -> tuple[Path | None, dict[str, Any] | None]:
    if not run.root.is_dir():
        raise ConfigError(f"--resume: run directory not found: {run.root}")
    if dist.is_main:
        ckpts.prepare()
    info = ckpts.latest_valid()
    if info is None:
        print(f"no valid checkpoint in {run.checkpoints}: starting {run.root} from the beginning", file=sys.stderr)
        return None, None
    state = load_checkpoint(info.path)
    world = state.get("world_size", 1)
    if world != dist.world_size and not force:
        raise ConfigError(
            f"--resume: {info.path.name} was written by {world} process(es), this run has {dist.world_size}; "
            "exact resume needs the same world size (use --force to continue anyway)"
        )
    return info.path, state


def _init_run_dir(run: RunDir, config: Config, preprocessing: dict[str, Any], resumed: bool) -> None:
    import json

    run.root.mkdir(parents=True, exist_ok=True)
    run.checkpoints.mkdir(exist_ok=True)
    save_config(config, run.config)
    run.preprocessing.write_text(json.dumps(preprocessing))
    fields: dict[str, Any] = {
        "name": config.experiment.name,
        "status": "running",
        "monitor": config.metrics.monitor,
        "mode": config.metrics.mode,
    }
    if not resumed:
        fields["started"] = time.time()
    run.update_info(**fields)


def _val_batches(config: Config, data: Any, dist: DistEnv) -> Any:
    x, y = data.split("val")
    size = config.train.eval_batch_size or config.train.batch_size
    return lambda: eval_batches(x, y, size, dist.rank, dist.world_size)
