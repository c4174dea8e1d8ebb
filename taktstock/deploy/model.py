"""The inference model of a run (raw features in, probabilities out): it lives in `checkpoint/inference.py`,
below `tracking/`, so the MLflow tracker logs the same model `promote` registers; re-exported here for deploy."""

from taktstock.checkpoint.inference import InferenceModel, LoadedRun, TableInferenceModel, activate, load_run

__all__ = ["InferenceModel", "LoadedRun", "TableInferenceModel", "activate", "load_run"]
