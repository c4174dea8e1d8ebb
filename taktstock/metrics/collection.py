"""Whole-epoch metrics (never averages of per-batch values), accumulated on the device.

Classification: loss, acc, f1, precision, recall (macro). Regression: loss, mse, mae, r2.
Language modelling: loss and perplexity per real token (`metrics/tokens.py`), no per-class metrics:
a vocabulary of classes over every position would cost far more than the forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taktstock.registry import METRICS

if TYPE_CHECKING:
    import torch

    from taktstock.config.schema import Config

CLASSIFICATION = ("loss", "acc", "f1", "precision", "recall")
REGRESSION = ("loss", "mse", "mae", "r2")
LANGUAGE_MODELING = ("loss", "perplexity")  # per token; see metrics/tokens.py


def _extra_names(config: Config) -> list[str]:
    return [path.rpartition(":")[2].lower() for path in config.metrics.extra]


def metric_names(config: Config) -> list[str]:
    """Every metric name a run logs for validation and training (used to check metrics.monitor)."""
    base = {"classification": CLASSIFICATION, "language_modeling": LANGUAGE_MODELING}.get(config.task, REGRESSION)
    names = [f"val/{n}" for n in (*base, *_extra_names(config))]
    names += ["train/loss"] + (["train/acc"] if config.task == "classification" else [])
    return names


# Config validation checks metrics.monitor against this list (through the registry, not by importing metrics).
METRICS.register("monitor_names", metric_names)


def class_scores(output: torch.Tensor) -> torch.Tensor:
    """Logits -> per-class scores; a single binary logit becomes two columns [-z, z]."""
    if output.ndim == 1 or output.shape[-1] == 1:
        z = output.reshape(-1, 1)
        return __import__("torch").cat([-z, z], dim=1)
    return output


def real_positions(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (B, T, V) logits and (B, T) labels -> (N, V) and (N,) over the real tokens (labels != -100);
    other outputs unchanged. Padding never counts in a metric."""
    if not (target.ndim >= 2 and output.ndim == target.ndim + 1 and not target.is_floating_point()):
        return output, target
    keep = target.reshape(-1) != -100
    return output.reshape(-1, output.shape[-1])[keep], target.reshape(-1)[keep]


def build_epoch_metrics(config: Config, num_outputs: int, device: torch.device, prefix: str = "val") -> Any:
    """The whole-split metrics of the run's task: `EpochMetrics`, or `TokenMetrics` for language modelling."""
    if config.task == "language_modeling":
        from taktstock.metrics.tokens import TokenMetrics

        return TokenMetrics(device, prefix)
    return EpochMetrics(config, num_outputs, device, prefix)


class EpochMetrics:
    """Loss and task metrics over a whole pass through a split.

    The torchmetrics objects are built on first use: importing torchmetrics (with scipy and
    matplotlib behind it) costs ~0.6 s, which would otherwise delay the first training step.
    User metric classes (metrics.extra) are resolved here, so a bad import path fails at start.
    """

    def __init__(self, config: Config, num_outputs: int, device: torch.device, prefix: str = "val") -> None:
        import torch

        self.prefix = prefix
        self.task = config.task
        self.device = device
        self.num_classes = max(num_outputs, 2) if self.task == "classification" else 0
        self._extra_paths = list(config.metrics.extra)
        # A class-weighted cross-entropy batch value is sum(w_y * l) / sum(w_y): averaging batches by
        # sum(w_y) instead of their size gives exactly the loss over the whole split.
        weights = config.loss.class_weights if config.loss.name == "cross_entropy" else None
        self.class_weights = None if weights is None else torch.tensor(weights, dtype=torch.float64, device=device)
        self._built = False
        self._task_updates = 0
        if self._extra_paths:  # user metric classes are checked at start, not at the first validation
            self._build()

    def _build(self) -> None:
        import torchmetrics
        from torchmetrics import classification as C
        from torchmetrics import regression as R

        self.loss = torchmetrics.MeanMetric().to(self.device)
        metrics: dict[str, Any]
        if self.task == "classification":
            common = {"num_classes": self.num_classes, "validate_args": False}
            metrics = {
                "acc": C.MulticlassAccuracy(average="micro", **common),
                "f1": C.MulticlassF1Score(average="macro", **common),
                "precision": C.MulticlassPrecision(average="macro", **common),
                "recall": C.MulticlassRecall(average="macro", **common),
            }
        else:
            metrics = {"mse": R.MeanSquaredError(), "mae": R.MeanAbsoluteError(), "r2": R.R2Score()}
        for path in self._extra_paths:
            metrics[path.rpartition(":")[2].lower()] = build_extra_metric(path, self.task, self.num_classes)
        self.metrics = torchmetrics.MetricCollection(metrics).to(self.device)
        self._built = True

    def update(self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        if not self._built:
            self._build()
        output, target = real_positions(output, target)
        weight = target.shape[0] if self.class_weights is None else self.class_weights[target].sum()
        self.loss.update(loss.detach(), weight=weight)
        out = output.detach().float()
        if self.task == "classification":
            self.metrics.update(class_scores(out), target)
        else:
            self.metrics.update(out.reshape(target.shape), target.float())
        self._task_updates += 1

    def update_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """A custom step that returns only the loss: the split's loss is still tracked."""
        if not self._built:
            self._build()
        self.loss.update(loss.detach(), weight=batch_size)

    def compute(self) -> dict[str, float]:
        if not self._built:
            self._build()
        values = {"loss": self.loss.compute()}
        if self._task_updates:  # no outputs/targets seen (loss-only custom step): no task metrics
            values |= dict(self.metrics.compute())
        return {f"{self.prefix}/{k}": float(v) for k, v in values.items()}

    def reset(self) -> None:
        if not self._built:
            self._build()
        self.loss.reset()
        self.metrics.reset()
        self._task_updates = 0


def build_extra_metric(path: str, task: str, num_classes: int) -> Any:
    """Instantiate a user/torchmetrics Metric class; `num_classes` (and `task`) are passed when it accepts them."""
    import inspect

    import torchmetrics

    from taktstock.errors import ConfigError
    from taktstock.utils.imports import import_object

    cls = import_object(path, "metrics.extra")
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    kwargs: dict[str, Any] = {}
    if task == "classification" and "num_classes" in accepted:
        kwargs["num_classes"] = num_classes
    if task == "classification" and "task" in accepted:  # torchmetrics' task wrappers, e.g. torchmetrics:AUROC
        kwargs["task"] = "multiclass"
    try:
        metric = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metrics.extra: cannot construct {path} ({exc})") from None
    if not isinstance(metric, torchmetrics.Metric):
        raise ConfigError(f"metrics.extra: {path} is not a torchmetrics.Metric subclass")
    return metric
