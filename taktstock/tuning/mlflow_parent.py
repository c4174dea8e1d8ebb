"""One MLflow parent run per sweep; each trial logs as its child (via logging.mlflow.parent_run_id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taktstock.config.schema import Config


def _client(config: Config) -> tuple[Any, str]:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        from taktstock.errors import UserError

        raise UserError("logging.mlflow.enabled needs MLflow: pip install 'taktstock[mlflow]'") from None
    from taktstock.tracking.mlflow import bound_http_retries, tracking_uri_for

    bound_http_retries()
    uri = tracking_uri_for(config)
    return MlflowClient(tracking_uri=uri), uri


def start_parent_run(config: Config, study: str, sweep_dir: Path, existing: str | None) -> str:
    """Create the sweep's parent run (or reopen the one a resumed sweep already has); returns its id."""
    client, uri = _client(config)
    if existing is not None:
        client.update_run(existing, status="RUNNING")
        return existing
    name = config.logging.mlflow.experiment or config.experiment.name
    from taktstock.tracking.mlflow import experiment_id

    exp_id = experiment_id(client, name, uri)
    run = client.create_run(
        exp_id, run_name=f"sweep-{study}", tags={"taktstock.sweep_dir": str(sweep_dir.resolve()), "taktstock.kind": "sweep"}
    )
    for dim in config.tune.space:
        client.log_param(run.info.run_id, f"space.{dim}", str(config.tune.space[dim].model_dump(exclude_none=True))[:500])
    return run.info.run_id


def finish_parent_run(config: Config, run_id: str, best: Any, params: dict[str, Any], sweep_dir: Path, ok: bool) -> None:
    """Log the best trial's value and parameters and the sweep outputs to the parent run, and close it."""
    import math

    client, _ = _client(config)
    if best is not None and best.value is not None and math.isfinite(best.value):
        client.log_metric(run_id, "best/" + config.metrics.monitor.replace("/", "_"), float(best.value))
        client.set_tag(run_id, "best_trial", str(best.number))
        for key, value in params.items():
            client.set_tag(run_id, f"best.{key}", str(value)[:500])
    for name in ("trials.csv", "best.yaml"):
        if (sweep_dir / name).exists():
            client.log_artifact(run_id, str(sweep_dir / name))
    if (sweep_dir / "plots").is_dir():
        client.log_artifacts(run_id, str(sweep_dir / "plots"), "plots")
    client.set_terminated(run_id, status="FINISHED" if ok else "KILLED")
