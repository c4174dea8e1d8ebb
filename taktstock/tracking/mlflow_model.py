"""The one MLflow form of a trained run (the inference model of checkpoint/inference.py), shared by `taktstock promote` and `logging.mlflow.log_model`.

Every version of a registered model takes the same contract: raw feature rows in (as predict reads them;
the training-time normalisation is inside), probabilities (or regression values) out. It is stored in
MLflow's 'pt2' format, a torch.export program, so it loads and serves without taktstock installed. A table run
(csv/parquet source) is logged as a pyfunc that takes a DataFrame of raw rows instead (`mlflow_table_model.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taktstock.checkpoint.inference import load_run


def log_inference_model(run_dir: str | Path, registered_model_name: str | None = None, **kwargs: Any) -> Any:
    """Log RUN_DIR's best inference model as artifact `model` of the active MLflow run; returns MLflow's ModelInfo.

    Raises `ConfigError` for runs whose samples are not float feature rows (see `load_run`)."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    loaded = load_run(run_dir, "best")
    if "table" in loaded.preprocessing:  # raw rows are typed columns, not one float matrix: the DataFrame pyfunc
        from taktstock.tracking.mlflow_table_model import log_table_model

        return log_table_model(loaded, run_dir, registered_model_name, **kwargs)
    x = loaded.sample_inputs(4)
    with torch.no_grad():
        y = loaded.model(x)
    return mlflow.pytorch.log_model(
        loaded.model,
        name="model",
        input_example=x.numpy(),
        signature=infer_signature(x.numpy(), y.numpy()),
        # Stated rather than inferred: inference re-loads the model in a subprocess (tens of seconds).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        registered_model_name=registered_model_name,
        **kwargs,
    )
