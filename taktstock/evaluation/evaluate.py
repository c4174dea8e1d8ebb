"""`evaluate(run_dir)`: metrics of a trained run on a split, a per-class report and a confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from taktstock.checkpoint.manager import load_checkpoint
from taktstock.config.loader import load_config
from taktstock.data.loaders import eval_batches
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError
from taktstock.evaluation.loop import run_eval
from taktstock.metrics.collection import EpochMetrics
from taktstock.run_dir import RunDir
from taktstock.training import components
from taktstock.training.distributed import DistEnv


def load_trained_model(
    run: RunDir, checkpoint: str = "best", device: torch.device | None = None, which: str | None = None
) -> tuple[Any, Any, Any]:
    """(config, prepared data, model in eval mode with the chosen weights); `which`: ema or raw (train.ema runs)."""
    if not run.config.is_file():
        raise ConfigError(f"not a run directory (no config.yaml): {run.root}")
    weights = {"best": run.best, "last": run.model}.get(checkpoint)
    if weights is None:
        raise ConfigError(f"--checkpoint: expected best or last, got '{checkpoint}'")
    config = load_config(run.config)
    raw_best = None
    if which is not None:
        weights, raw_best = _ema_or_raw(run, config, checkpoint, which, weights)
    data = prepare(config)
    if device is None:
        try:  # train.device: the GPU when there is one
            device = components.select_device(config, DistEnv())
        except ConfigError:  # trained on an accelerator this machine lacks
            device = torch.device("cpu")
    model = components.build_model_for(config, data, device, DistEnv(), initial_weights=False)[0]
    if raw_best is not None:
        model.load_state_dict(raw_best)
    elif weights.is_file():
        components.load_weights(model, weights)
    elif (run.checkpoints / "last.pt").is_file():  # training interrupted before final weights were written
        model.load_state_dict(load_checkpoint(run.checkpoints / "last.pt")["model"])
    else:
        raise ConfigError(f"{run.root} has no trained weights yet ({weights.name} missing)")
    model.eval()
    return config, data, model


def _ema_or_raw(run: RunDir, config: Any, checkpoint: str, which: str, weights: Path) -> tuple[Path, dict[str, Any] | None]:
    """train.ema runs keep both: best.safetensors and ema.safetensors are EMA, model.safetensors and best.pt raw."""
    from taktstock.training.ema import EMA_FILE

    if which not in ("ema", "raw"):
        raise ConfigError(f"--weights: expected ema or raw, got '{which}'")
    if config.train.ema is None:
        if which == "ema":
            raise ConfigError(f"--weights ema: {run.root} was trained without train.ema")
        return weights, None
    if which == "ema":
        return (run.best if checkpoint == "best" else run.root / EMA_FILE), None
    if checkpoint == "last":
        return run.model, None
    best = run.checkpoints / "best.pt"
    if not best.is_file():
        raise ConfigError(f"--weights raw: {run.root} has no best checkpoint (checkpoints/best.pt) with the raw best weights")
    return weights, load_checkpoint(best)["model"]


def evaluate(
    run_dir: str | Path, checkpoint: str = "best", split: str = "test", quiet: bool = False, weights: str | None = None
) -> dict[str, float]:
    """Evaluate a run on `split`; writes RUN_DIR/eval/{metrics.json, report.json, confusion_matrix.png}.

    `weights`: ema or raw for a run trained with train.ema (default: its EMA weights)."""
    run = RunDir(Path(run_dir))
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: expected train, val or test, got '{split}'")
    config, data, model = load_trained_model(run, checkpoint, which=weights)
    device = next(model.parameters()).device
    x, y = data.split(split)
    if len(y) == 0:
        raise ConfigError(f"--split: the {split} split is empty (see data.{split}_fraction)")
    metrics = EpochMetrics(config, data.num_outputs, device, prefix=split)
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    size = config.train.eval_batch_size or config.train.batch_size
    values = run_eval(
        model,
        eval_batches(x, y, size),
        components.build_loss_for(config, device),
        metrics,
        device,
        components.autocast_for(config, device),
        components.step_fn_for(config),
        collect=outputs,
    )
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    (run.eval_dir / "metrics.json").write_text(json.dumps({"split": split, "checkpoint": checkpoint, "metrics": values}, indent=2))
    if config.task == "classification" and outputs:
        _classification_report(run, data.class_names, metrics.num_classes, outputs, split)
    from taktstock.tracking.mlflow import log_evaluation

    log_evaluation(run, config, values, split)  # into the training run's MLflow run, if it has one
    if not quiet:
        from taktstock.tracking.console import print_table

        print_table(f"{split} metrics ({checkpoint} checkpoint)", values)
        print(f"run directory: {run.root}")
    return values


def _classification_report(
    run: RunDir, class_names: list[str], n: int, outputs: list[tuple[torch.Tensor, torch.Tensor]], split: str
) -> None:
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    from taktstock.metrics.collection import class_scores
    from taktstock.tracking.plots import confusion_matrix

    scores = class_scores(torch.cat([o for o, _ in outputs]))
    target = torch.cat([t for _, t in outputs])
    names = class_names if len(class_names) == n else [str(i) for i in range(n)]
    per_class = {
        "precision": multiclass_precision(scores, target, n, average=None),
        "recall": multiclass_recall(scores, target, n, average=None),
        "f1": multiclass_f1_score(scores, target, n, average=None),
    }
    support = torch.bincount(target, minlength=n)
    report = {name: {k: float(v[i]) for k, v in per_class.items()} | {"support": int(support[i])} for i, name in enumerate(names)}
    (run.eval_dir / "report.json").write_text(json.dumps(report, indent=2))
    matrix = multiclass_confusion_matrix(scores, target, n).numpy()
    confusion_matrix(matrix, names, run.eval_dir / "confusion_matrix.png", f"{split} confusion matrix")
