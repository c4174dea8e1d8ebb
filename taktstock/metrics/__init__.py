"""Whole-split metrics from exact counts and sums on the device; torchmetrics only for `metrics.extra`."""

from taktstock.metrics.collection import EpochMetrics, metric_names

__all__ = ["EpochMetrics", "metric_names"]
