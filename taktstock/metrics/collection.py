"""Whole-epoch metrics (never averages of per-batch values), accumulated on the device.

Classification: loss, acc, f1, precision, recall (macro). Regression: loss, mse, mae, r2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from taktstock.config.schema import Config

CLASSIFICATION = ("loss", "acc", "f1", "precision", "recall")
REGRESSION = ("loss", "mse", "mae", "r2")


def _extra_names(config: Config) -> list[str]:
    return [path.rpartition(":")[2].lower() for path in config.metrics.extra]


def metric_names(config: Config) -> list[str]:
    """Every metric name a run logs for validation and training (used to check metrics.monitor)."""
    base = CLASSIFICATION if config.task == "classification" else REGRESSION
    names = [f"val/{n}" for n in (*base, *_extra_names(config))]
    names += ["train/loss"] + (["train/acc"] if config.task == "classification" else [])
    return names


def class_scores(output: torch.Tensor) -> torch.Tensor:
    """Logits -> per-class scores; a single binary logit becomes two columns [-z, z]."""
    if output.ndim == 1 or output.shape[-1] == 1:
        z = output.reshape(-1, 1)
        return __import__("torch").cat([-z, z], dim=1)
    return output


class EpochMetrics:
    """Loss and task metrics over a whole pass through a split.

    The torchmetrics objects are built on first use: importing torchmetrics (with scipy and
    matplotlib behind it) costs ~0.6 s, which would otherwise delay the first training step.
    User metric classes (metrics.extra) are resolved here, so a bad import path fails at start.
    """

    def __init__(self, config: Config, num_outputs: int, device: torch.device, prefix: str = "val") -> None:
        from taktstock.utils.imports import import_object

        self.prefix = prefix
        self.task = config.task
        self.device = device
        self.num_classes = max(num_outputs, 2) if self.task == "classification" else 0
        self._extra = {path.rpartition(":")[2].lower(): import_object(path, "metrics.extra") for path in config.metrics.extra}
        self._built = False

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
        for name, cls in self._extra.items():
            metrics[name] = cls()
        self.metrics = torchmetrics.MetricCollection(metrics).to(self.device)
        self._built = True

    def update(self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        if not self._built:
            self._build()
        self.loss.update(loss.detach(), weight=target.shape[0])
        out = output.detach().float()
        if self.task == "classification":
            self.metrics.update(class_scores(out), target)
        else:
            self.metrics.update(out.reshape(target.shape), target.float())

    def compute(self) -> dict[str, float]:
        if not self._built:
            self._build()
        values = {"loss": self.loss.compute()} | dict(self.metrics.compute())
        return {f"{self.prefix}/{k}": float(v) for k, v in values.items()}

    def reset(self) -> None:
        if not self._built:
            self._build()
        self.loss.reset()
        self.metrics.reset()
