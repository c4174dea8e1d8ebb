"""`train(config)`: the whole run, top to bottom. Each line calls a builder that lives elsewhere."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taktstock.checkpoint.checkpointer import Checkpointer, find_resume, schedule_horizon
from taktstock.checkpoint.manager import CheckpointWriter
from taktstock.checkpoint.weights import save_weights
from taktstock.config.loader import config_to_dict, load_config, save_config
from taktstock.config.paths import with_absolute_paths
from taktstock.config.schema import Config
from taktstock.data.loaders import build_train_batches, repeated_eval_batches
from taktstock.errors import ConfigError, TrainingAborted
from taktstock.metrics.collection import build_epoch_metrics
from taktstock.models.finetune import finetune_callbacks
from taktstock.remote.location import is_url
from taktstock.remote.sync import checkpoint_manager
from taktstock.run_dir import RunDir
from taktstock.tracking.base import TrackerGroup
from taktstock.tracking.factory import build_trackers
from taktstock.tracking.jsonl import MetricsFile, read_metrics
from taktstock.training import components
from taktstock.training.debug_batches import debug_train_batches, debug_val_batches
from taktstock.training.distributed import DistEnv, is_sharded, setup_distributed, teardown_distributed
from taktstock.training.ema import averaged_weights, build_ema
from taktstock.training.losses import build_loss
from taktstock.training.monitor import MetricMonitor
from taktstock.training.optim import build_optimizer, build_scheduler
from taktstock.training.parts import TrainerParts, full_model_state, register_parts
from taktstock.training.precision import autocast_factory, grad_scaler
from taktstock.training.profiling import profiler_callbacks
from taktstock.training.resume import check_resume_compatible, relaunch_plan
from taktstock.training.samples import sample_loggers
from taktstock.training.settings import LoopSettings
from taktstock.training.trainer import Preempted, Trainer
from taktstock.utils.atomic import atomic_write_text
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
    overwrite: bool = False,
) -> RunResult:
    """Train an experiment; with `resume`, continue the run in that directory from its newest valid checkpoint.

    A `run_dir` that holds a run with the same config is continued (or left alone when complete); one with a
    different config is a ConfigError unless `overwrite` replaces it (see training/resume.py relaunch_plan).
    `callbacks` are extra trainer callbacks (after those of train.callbacks), e.g. a tuning trial's pruning reporter.
    A URL (s3://..., any fsspec URL) as `run_dir`/`resume` trains in a local mirror uploaded as it goes (remote/).
    """
    if is_url(run_dir) or is_url(resume):
        from taktstock.remote.sync import train_in_mirror

        return train_in_mirror(train, config, overrides, run_dir, resume, force=force, callbacks=callbacks, overwrite=overwrite)
    if resume is not None:
        run = RunDir(Path(resume))
        config = check_resume_compatible(run, config, overrides, force)
    else:
        config = config if isinstance(config, Config) else load_config(config, overrides)
        run = RunDir(Path(run_dir)) if run_dir else RunDir.new(config.experiment.output_dir, config.experiment.name)
        if run.root.exists() and not run.root.is_dir():
            raise ConfigError(f"--run-dir: {run.root} exists and is not a directory")
        plan = relaunch_plan(run, with_absolute_paths(config), overwrite)
        if plan == "complete":
            return _completed(run)
        if plan == "resume":  # the same command launched again (a requeue, a retry): continue the run
            resume, overwrite = run.root, False
    config = with_absolute_paths(config)  # the run's config.yaml must work from any working directory
    dist = setup_distributed(config)
    try:
        # Under torchrun every rank must use rank 0's run directory (names carry a timestamp).
        run = RunDir(Path(dist.broadcast_object(str(run.root))))
        return _train(config, run, dist, resuming=resume is not None, force=force, callbacks=callbacks, overwrite=overwrite)
    finally:
        teardown_distributed(dist)


def _completed(run: RunDir) -> RunResult:
    """A relaunch of a finished run: nothing is trained and no file is written (retries are idempotent)."""
    info = run.read_info()
    records = read_metrics(run.metrics) if run.metrics.exists() else []
    final = {k: v for r in records if "step" in r for k, v in r.items() if k.startswith("val/")}
    steps = int(info.get("steps") or 0)
    if DistEnv.from_environ().is_main:
        print(f"{run.root} holds a completed run (step {steps}): nothing to train (--overwrite trains it again)", file=sys.stderr)
    return RunResult(run.root, "completed", steps, info.get("best"), final)


def _train(
    config: Config, run: RunDir, dist: DistEnv, resuming: bool, force: bool, callbacks: list[Any] | None = None, overwrite: bool = False
) -> RunResult:
    device, data, model, forward_model = components.prepare_and_build_model(config, dist)
    writer = _checkpoint_writer(config, run)
    start, ckpt_state = find_resume(writer, run.root, dist, force) if resuming else (None, None)
    # Trackers are built (and a tracking server probed) before the run directory is touched.
    trackers = TrackerGroup(build_trackers(config, run, dist) if dist.is_main else [], fail_soft=config.logging.fail_soft)
    if dist.is_main:
        if start is None:  # a fresh run, or a resume that found no valid checkpoint: start clean
            _clear_previous_run(run, announce=overwrite)
        _init_run_dir(run, config, data.preprocessing(), resumed=start is not None)
        _copy_tokenizer(data, run)
    train_batches = debug_train_batches(build_train_batches(data.split("train"), config, device, dist.rank, dist.world_size), config)
    settings = LoopSettings.from_config(config, len(train_batches))
    # The LR schedule's horizon is known before anything is built: this run's steps, or the original run's on resume.
    horizon = schedule_horizon(settings.total_steps, config.scheduler.name, ckpt_state)
    settings = dataclasses.replace(settings, schedule_horizon=horizon)
    optimizer = build_optimizer(config.optim, model)
    ema = build_ema(config.train.ema, model)  # validated, checkpointed (part "ema") and saved as best.safetensors
    parts = TrainerParts(
        model=model,
        forward_model=forward_model,
        loss_fn=build_loss(config.loss).to(device),
        optimizer=optimizer,
        scheduler=build_scheduler(config, optimizer, horizon),
        scaler=grad_scaler(config.train.precision, device),
        train_batches=train_batches,
        val_batches=debug_val_batches(_val_batches(config, data, dist) if len(data.split("val")) else None, train_batches, config),
        val_metrics=build_epoch_metrics(config, data.num_outputs, device, "val"),
        trackers=trackers,
        metrics_file=(metrics_file := MetricsFile(run.metrics)),
        monitor=MetricMonitor(config.metrics.monitor, config.metrics.mode, config.early_stopping.min_delta, config.early_stopping.patience),
        device=device,
        autocast=autocast_factory(config.train.precision, device),
        step_fn=components.step_fn_for(config.train),
        dist=dist,
        callbacks=components.callbacks_for(config.train)
        + finetune_callbacks(config.model, model)
        + list(callbacks or [])
        + sample_loggers(config, data, run, dist.is_main)
        + profiler_callbacks(config.train.profile, run.root / "profile", device, dist.is_main),
        # train.ema: best.safetensors holds the EMA weights (best.pt keeps the raw ones in "model").
        save_best_weights=(lambda state: save_weights(model, run.best, averaged_weights(state["ema"]) if ema else state["model"]))
        if dist.is_main
        else None,
        ema=ema,
    )
    checkpointer = Checkpointer(writer, config.checkpoint, dist, device, horizon)
    trainer = Trainer(parts, settings, checkpointer, config)
    register_parts(checkpointer, trainer, sharded=is_sharded(config, dist))
    if ckpt_state is not None:
        checkpointer.restore(ckpt_state)
        if trainer.state.stop_reason in ("completed", "max_steps"):
            trainer.state.stop_reason = None  # train.epochs or train.max_steps may have been extended
    if dist.is_main:
        metrics_file.open(truncate_to=ckpt_state["metrics_offset"] if ckpt_state else None)
        trackers.start(config_to_dict(config), ckpt_state["trackers"] if ckpt_state else None, trainer.state.step)
        if ckpt_state is None:  # a resumed run logged its data when it started
            trackers.call("log_dataset", _dataset_description(config, data))
        if start is not None:
            print(f"resuming {run.root} from {start.name} (step {trainer.state.step}, epoch {trainer.state.epoch})", file=sys.stderr)
    status, fit_started = "failed", time.perf_counter()
    try:
        trainer.fit()
        checkpointer.flush()
        status = "completed"
    except Preempted as exc:
        checkpointer.flush()
        status = "preempted"
        where = exc.checkpoint or "no checkpoint"
        if dist.is_main:
            procs = f" --nproc-per-node {dist.world_size}" if dist.enabled else ""  # multi-node: the same layout as before
            print(f"{exc.signal_name}: saved {where}; resume with: taktstock train --resume {run.root}{procs}", file=sys.stderr)
        raise
    except Exception as exc:
        status = "aborted" if isinstance(exc, TrainingAborted) else "failed"
        # The best state so far is kept, as an immediate write would have (all ranks abort together; an
        # unexpected error may have left one rank elsewhere, so a multi-process run does not wait on it).
        if status == "aborted" or not dist.enabled:
            with contextlib.suppress(TrainingAborted):
                checkpointer.write_best()
        raise
    finally:
        checkpointer.settle()  # on any exit, a background write finishes before the process may end
        metrics_file.close()
        spent = {"saves": checkpointer.saves, "seconds": round(checkpointer.seconds, 4)}
        spent["share"] = round(checkpointer.seconds / max(time.perf_counter() - fit_started, 1e-9), 5)
        if dist.is_main:
            run.update_info(
                status=status,
                ended=time.time(),
                steps=trainer.state.step,
                best=parts.monitor.best,
                nan_skips=trainer.state.nan_skips,
                checkpoints=spent,  # this process's time in checkpointing, and its share of the training time
            )
            if trainer.state.nan_skips:
                print(
                    f"warning: skipped {trainer.state.nan_skips} batch(es) with a non-finite loss (train.nan_policy=skip)", file=sys.stderr
                )
            if status != "completed":
                trackers.finish("FAILED" if status in ("failed", "aborted") else "KILLED")
    outcome = "FAILED"  # writing the final weights or plots can still fail
    try:
        result = _finish(config, run, trainer, parts, dist, spent)
        if dist.is_main:
            trackers.call("log_run_outputs", run, result.final_metrics)  # config, plots, best model
        outcome = "FINISHED"
    finally:
        if dist.is_main:
            trackers.finish(outcome)
    return result


def _checkpoint_writer(config: Config, run: RunDir) -> CheckpointWriter:
    writer: CheckpointWriter = checkpoint_manager(run.checkpoints, config.checkpoint.keep_last)  # uploads for a run at a URL
    if config.checkpoint.async_write:
        from taktstock.checkpoint.async_writer import AsyncCheckpointManager

        writer = AsyncCheckpointManager(writer)
    return writer


def _finish(config: Config, run: RunDir, trainer: Trainer, parts: TrainerParts, dist: DistEnv, spent: dict[str, Any]) -> RunResult:
    """Final weights, plots and the summary; only rank 0 writes."""
    records = read_metrics(run.metrics) if dist.is_main and run.metrics.exists() else []
    final = {k: v for r in records if "step" in r for k, v in r.items() if k.startswith("val/")}
    weights = full_model_state(parts.model, config, dist)  # FSDP: every rank takes part in gathering the weights
    if dist.is_main:
        save_weights(parts.model, run.model, weights)
        if parts.ema is not None:
            save_weights(parts.ema.module, run.ema)
        if not run.best.exists():
            save_weights(parts.ema.module if parts.ema is not None else parts.model, run.best, None if parts.ema is not None else weights)
        if config.logging.plots and records:
            from taktstock.tracking.plots import learning_curves

            run.plots.mkdir(exist_ok=True)
            learning_curves(records, run.plots / "learning_curves.png", config.experiment.name)
        from taktstock.tracking.console import print_table

        summary = {"run_dir": str(run.root), "steps": trainer.state.step, "stopped": trainer.state.stop_reason or "", **final}
        if parts.monitor.best is not None:
            summary[f"best {parts.monitor.name}"] = parts.monitor.best
        if trainer.throughput:
            summary["tokens/s" if trainer.settings.tokens else "samples/s"] = round(trainer.throughput)
        summary["checkpointing"] = f"{spent['saves']} saves, {spent['seconds']:.2f} s ({spent['share']:.1%} of training)"
        print_table("training summary", summary)
    return RunResult(run.root, trainer.state.stop_reason or "completed", trainer.state.step, parts.monitor.best, final)


def _clear_previous_run(run: RunDir, announce: bool = False) -> None:
    """Clear an earlier run's results before a fresh start: only with --overwrite (`announce`), or for a resume
    that found no valid checkpoint (which keeps the damaged checkpoint files for inspection).

    Left in place, the old run's higher-numbered checkpoints would be kept over the new ones by
    pruning and picked up by a later --resume, and its metrics and event files would mix with the
    new ones. Only directories that taktstock wrote (they have run.json) are touched.
    """
    if not run.info.is_file():
        return
    import shutil

    if announce:
        print(f"note: --overwrite: replacing the earlier run in {run.root}", file=sys.stderr)
    # A resume that found no valid checkpoint keeps the (damaged) checkpoint files for inspection.
    legacy_events = run.root / "tensorboard"  # event files of runs written before they moved into the run directory
    for path in (run.checkpoints, run.eval_dir, run.plots, legacy_events) if announce else (run.eval_dir, run.plots, legacy_events):
        shutil.rmtree(path, ignore_errors=True)
    for path in (run.metrics, run.samples, run.model, run.best, run.ema, run.info, *run.event_files()):
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


def _dataset_description(config: Config, data: Any) -> dict[str, Any]:
    """What trackers record about the training data: name, digest (the prepared data's fingerprint), source, split sizes."""
    d = config.data
    location = d.remote or (str(Path(d.path).resolve()) if d.path else None)
    name = Path(d.path).name if d.path else d.source
    splits = {split: len(data.split(split)) for split in ("train", "val", "test")}
    return {"name": name, "digest": str(data.fingerprint), "source": d.source, "path": location, "splits": splits}


def _copy_tokenizer(data: Any, run: RunDir) -> None:
    """Text runs carry their tokenizer (RUN_DIR/tokenizer.json): generate and predict read it there, without the cache."""
    source = getattr(data, "tokenizer_path", None)
    if source is not None:
        import shutil

        shutil.copyfile(source, run.root / "tokenizer.json")


def _val_batches(config: Config, data: Any, dist: DistEnv) -> Any:
    split = data.split("val")
    size = config.train.eval_batch_size or config.train.batch_size
    return repeated_eval_batches(split, size, dist.rank, dist.world_size, config)
