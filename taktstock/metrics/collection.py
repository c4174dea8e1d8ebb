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
    """Loss and task metrics over a whole pass through a split: `reset()`, `update()` per batch, `compute()`.

    The built-in metrics come from exact counts and sums kept on the device (`metrics/sufficient.py`), so a run
    without `metrics.extra` never imports torchmetrics (~5.6 s with torchvision and transformers installed).
    User metric classes (metrics.extra) are torchmetrics objects, built here so a bad import path fails at
    start. In a multi-process run every rank evaluates its shard and `compute()` adds the shards up.
    """

    def __init__(self, config: Config, num_outputs: int, device: torch.device, prefix: str = "val") -> None:
        import torch

        self.prefix = prefix
        self.task = config.task
        self.device = device
        self.num_classes = max(num_outputs, 2) if self.task == "classification" else 0
        # A class-weighted cross-entropy batch value is sum(w_y * l) / sum(w_y): averaging batches by
        # sum(w_y) instead of their size gives exactly the loss over the whole split.
        weights = config.loss.class_weights if config.loss.name == "cross_entropy" else None
        self.class_weights = None if weights is None else torch.tensor(weights, dtype=torch.float64, device=device)
        self.num_outputs = num_outputs
        self.stats = self._new_stats()
        self._loss = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of batch loss x weight, weight)
        self._task_updates = 0
        self._summed = False  # compute() has added up the ranks' states
        self.extra: Any = None  # a torchmetrics MetricCollection of metrics.extra, only when configured
        if config.metrics.extra:
            import torchmetrics

            extra = {
                path.rpartition(":")[2].lower(): build_extra_metric(path, self.task, self.num_classes) for path in config.metrics.extra
            }
            self.extra = torchmetrics.MetricCollection(extra).to(device)

    def _new_stats(self) -> Any:
        from taktstock.metrics.sufficient import ConfusionCounts, RegressionSums

        if self.task == "classification":
            return ConfusionCounts(self.num_classes, self.device)
        # One column per output from the start, so a rank that sees no batch still all-reduces the same shape.
        return RegressionSums(self.device, max(self.num_outputs, 1))

    def update(self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        output, target = real_positions(output, target)
        out = output.detach().float()
        if self.task == "classification":
            self._add_loss(loss, self._class_weight(target))
            scores = class_scores(out)
            self.stats.update(scores, target)
            if self.extra is not None:
                self.extra.update(scores, target)
        else:
            self._add_loss(loss, target.shape[0])
            pred = out.reshape(target.shape)
            self.stats.update(pred, target)
            if self.extra is not None:
                self.extra.update(pred, target.float())
        self._task_updates += 1

    def update_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """A custom step that returns only the loss: the split's loss is still tracked."""
        self._add_loss(loss, batch_size)

    def _class_weight(self, target: torch.Tensor) -> torch.Tensor:
        """The weight of a batch's mean loss: its labels that count (not -100), or their sum of class weights."""
        from taktstock.metrics.tokens import IGNORE_INDEX

        counted = target != IGNORE_INDEX
        if self.class_weights is None:
            return counted.sum()
        return (self.class_weights[target.clamp(min=0)] * counted).sum()

    def _add_loss(self, loss: torch.Tensor, weight: torch.Tensor | int) -> None:
        import torch

        weight = torch.as_tensor(weight, dtype=torch.float64, device=self.device)
        # A non-finite batch loss makes the split's loss non-finite (torchmetrics' MeanMetric dropped it with a warning).
        self._loss += torch.stack([loss.detach().double().reshape(()) * weight, weight])

    def compute(self) -> dict[str, float]:
        """`<prefix>/<name>` over the whole split (every rank's shard), as Python floats."""
        if not self._summed:
            self._sum_over_ranks()
            self._summed = True
        total, weight = self._loss.tolist()
        values = {"loss": total / weight if weight else float("nan")}
        if self._task_updates:  # no outputs/targets seen (loss-only custom step): no task metrics
            values |= self.stats.scores()
            if self.extra is not None:  # torchmetrics adds these up across ranks itself
                values |= {k: float(v) for k, v in self.extra.compute().items()}
        return {f"{self.prefix}/{k}": float(v) for k, v in values.items()}

    def _sum_over_ranks(self) -> None:
        """Replace this rank's loss sums, counts and number of task updates by their sums over all ranks."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        updates = torch.tensor([self._task_updates], dtype=torch.float64, device=self.device)
        flat = torch.cat([self._loss, updates, self.stats.state().double()])  # int64 counts are exact in float64 below 2**53
        dist.all_reduce(flat)  # every rank calls compute(): one collective, in the same order everywhere
        self._loss, self._task_updates = flat[:2].clone(), int(flat[2])
        self.stats.load(flat[3:])

    def confusion(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-class (tp, fp, fn), int64 on the CPU, of the pass `compute()` summed (classification only)."""
        return self.stats.tp_fp_fn()

    def confusion_matrix(self) -> torch.Tensor | None:
        """The (C, C) confusion matrix (rows true, columns predicted); None above MATRIX_MAX_CLASSES classes."""
        return self.stats.matrix()

    def reset(self) -> None:
        self.stats = self._new_stats()
        self._loss.zero_()
        self._task_updates = 0
        self._summed = False
        if self.extra is not None:
            self.extra.reset()


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
