"""Stable locations the pipeline stages share, so DVC can cache them and Airflow tasks can find them."""

from __future__ import annotations

import re
from pathlib import Path

from taktstock.config.schema import Config


def slug(name: str) -> str:
    """A name safe for paths and DAG ids: letters, digits, '_', '-', '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"


def pipeline_dir(config: Config) -> Path:
    """pipeline.run_dir, else experiments/pipeline/<name> (relative to the project directory)."""
    return Path(config.pipeline.run_dir or f"experiments/pipeline/{slug(config.experiment.name)}")


def promote_metric(config: Config) -> str:
    """The test metric promotion compares: pipeline.promote_metric, else metrics.monitor with val/ -> test/."""
    if config.pipeline.promote_metric:
        return config.pipeline.promote_metric
    monitor = config.metrics.monitor
    return "test/" + monitor.split("/", 1)[1] if monitor.startswith("val/") else monitor
