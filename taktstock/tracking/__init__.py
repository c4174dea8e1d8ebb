"""Where metrics go: metrics.jsonl (always), TensorBoard, MLflow, W&B; console progress; plots."""

from taktstock.tracking.base import Tracker, TrackerGroup

__all__ = ["Tracker", "TrackerGroup"]
