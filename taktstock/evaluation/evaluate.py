"""`evaluate(run_dir)`: metrics of a trained run on a split, a per-class report and a confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from taktstock.checkpoint.trained import load_trained_model as load_trained_model_of
from taktstock.config.loader import load_config
from taktstock.data.loaders import eval_batches
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError
from taktstock.metrics.collection import EpochMetrics, build_epoch_metrics
from taktstock.run_dir import RunDir
from taktstock.training.components import step_fn_for
from taktstock.training.eval_loop import run_eval
from taktstock.training.losses import build_loss
from taktstock.training.precision import autocast_factory


def load_trained_model(
    run: RunDir, checkpoint: str = "best", device: torch.device | None = None, weights: str | None = None
) -> tuple[Any, Any, Any]:
    """(config, prepared data, model in eval mode with the chosen weights) on the run's device;
    `weights`: ema or raw for a train.ema run."""
    from taktstock.training.device import select_device

    config = load_config(run.config) if run.config.is_file() else None
    if device is None and config is not None:
        try:  # train.device: the GPU when there is one
            device = select_device(config.train.device)
        except ConfigError:  # trained on an accelerator this machine lacks
            device = torch.device("cpu")
    trained = load_trained_model_of(run, checkpoint, device, weights)
    return trained.config, prepare(trained.config), trained.model


def evaluate(
    run_dir: str | Path, checkpoint: str = "best", split: str = "test", quiet: bool = False, weights: str | None = None
) -> dict[str, float]:
    """Evaluate a run on `split`; writes RUN_DIR/eval/{metrics.json, report.json, confusion_matrix.png}.

    `weights`: ema or raw for a run trained with train.ema (default: its EMA weights)."""
    run = RunDir(Path(run_dir))
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: expected train, val or test, got '{split}'")
    config, data, model = load_trained_model(run, checkpoint, weights=weights)
    device = next(model.parameters()).device
    part = data.split(split)
    if len(part) == 0:
        raise ConfigError(f"--split: the {split} split is empty (see data.{split}_fraction)")
    metrics = build_epoch_metrics(config, data.num_outputs, device, prefix=split)
    size = config.train.eval_batch_size or config.train.batch_size
    values = run_eval(
        model,
        eval_batches(part, size, config=config),
        build_loss(config.loss).to(device),
        metrics,
        device,
        autocast_factory(config.train.precision, device),
        step_fn_for(config.train),
    )
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    (run.eval_dir / "metrics.json").write_text(json.dumps({"split": split, "checkpoint": checkpoint, "metrics": values}, indent=2))
    if config.task == "classification" and f"{split}/acc" in values:  # a loss-only custom step has no counts
        _classification_report(run, data.class_names, metrics, split)
    from taktstock.tracking.mlflow import log_evaluation

    log_evaluation(run, config, values, split)  # into the training run's MLflow run, if it has one
    if not quiet:
        from taktstock.tracking.console import print_table

        print_table(f"{split} metrics ({checkpoint} checkpoint)", values)
        print(f"run directory: {run.root}")
    return values


def _classification_report(run: RunDir, class_names: list[str], metrics: EpochMetrics, split: str) -> None:
    """report.json (per-class precision, recall, f1, support) and the confusion matrix plot, from the pass's counts."""
    from taktstock.metrics.sufficient import per_class_scores
    from taktstock.tracking.plots import confusion_matrix

    n = metrics.num_classes
    tp, fp, fn = metrics.confusion()
    per_class = per_class_scores(tp, fp, fn)
    support = tp + fn
    names = class_names if len(class_names) == n else [str(i) for i in range(n)]
    report = {name: {k: float(v[i]) for k, v in per_class.items()} | {"support": int(support[i])} for i, name in enumerate(names)}
    (run.eval_dir / "report.json").write_text(json.dumps(report, indent=2))
    matrix = metrics.confusion_matrix()
    if matrix is not None:  # kept up to MATRIX_MAX_CLASSES classes (metrics/sufficient.py)
        confusion_matrix(matrix.numpy(), names, run.eval_dir / "confusion_matrix.png", f"{split} confusion matrix")
