"""Epoch-level metrics computed with torchmetrics."""

from taktstock.metrics.collection import EpochMetrics, metric_names

__all__ = ["EpochMetrics", "metric_names"]
