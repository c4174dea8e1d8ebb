"""Where MLflow data lives: logging.mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else embedded SQLite.

The default keeps everything under experiments/ (mlflow.db plus mlartifacts/), never the ./mlruns file store.
"""

from __future__ import annotations

import os
from pathlib import Path

from taktstock.config.schema import Config

DEFAULT_DB = Path("experiments/mlflow.db")


def tracking_uri(config: Config) -> str:
    uri = config.logging.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DB.resolve()}"


def artifact_location(uri: str) -> str | None:
    """For a SQLite store: mlartifacts/ beside the database (MLflow would otherwise pick ./mlruns)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts").resolve().as_uri()
