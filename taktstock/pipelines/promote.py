"""`taktstock promote RUN_DIR`: register a run's best model and move the `champion` alias only if it is better.

The registered model is named after the experiment. Each version carries its test metric as tags; the new
version takes the `champion` alias when its metric beats the current champion's (strictly, in the direction
of metrics.mode), otherwise it gets the `challenger` alias and the champion stays. The outcome is written to
RUN_DIR/promotion.json (the last output of the DVC and Airflow pipelines).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from taktstock.errors import ConfigError, UserError
from taktstock.pipelines.paths import promote_metric
from taktstock.run_dir import RunDir
from taktstock.tracking.mlflow import artifact_location, bound_http_retries, tracking_uri_for

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_METRIC, TAG_VALUE, TAG_RUN_DIR = "taktstock.metric", "taktstock.metric_value", "taktstock.run_dir"
TAG_WEIGHTS = "taktstock.weights_sha256"


@dataclass
class Promotion:
    model: str
    version: int
    metric: str
    value: float
    champion_value: float | None  # the previous champion's value (None: there was none)
    promoted: bool
    tracking_uri: str
    already_champion: bool = False  # these weights were the champion before this promote


def better(new: float, old: float, mode: str) -> bool:
    return new > old if mode == "max" else new < old


def test_metrics(run: RunDir) -> dict[str, float]:
    """eval/metrics.json of the best checkpoint on the test split, evaluating first when it is missing or stale."""
    path = run.eval_dir / "metrics.json"
    try:
        data = json.loads(path.read_text())
        if data.get("split") == "test" and data.get("checkpoint") == "best":
            return data["metrics"]
    except (OSError, ValueError, KeyError):
        pass
    from taktstock.evaluation.evaluate import evaluate

    return evaluate(run.root, checkpoint="best", split="test", quiet=True)


def promote(run_dir: str | Path) -> Promotion:
    from taktstock.config.loader import load_config

    run = RunDir(Path(run_dir))
    if not run.config.is_file():
        raise ConfigError(f"not a run directory (no config.yaml): {run.root}")
    config = load_config(run.config)
    metric, mode = promote_metric(config), config.metrics.mode
    metrics = test_metrics(run)
    if metric not in metrics:
        raise ConfigError(f"pipeline.promote_metric: '{metric}' is not among the test metrics ({', '.join(sorted(metrics))})")
    value = float(metrics[metric])

    from mlflow.exceptions import MlflowException

    uri = tracking_uri_for(config)
    # One promote of a run at a time: an Airflow retry can start while a presumed-dead attempt still runs, and two
    # concurrent promotes would each register a version and race for the alias. The second waits, then finds the
    # first one's version by the weights' digest.
    with run.root.joinpath(".promote.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result = _promote(run, config, metric, mode, metrics, value, uri)
        except MlflowException as exc:
            raise UserError(f"MLflow ({uri}): {exc.message}") from None
        run.root.joinpath("promotion.json").write_text(json.dumps(asdict(result) | {"time": time.time()}, indent=2))
    return result


def model_name(config: Any) -> str:
    """The registered model's name: the experiment name ('/' and ':' are not allowed by MLflow)."""
    return re.sub(r"[/:]", "-", config.experiment.name)


def _promote(run: RunDir, config: Any, metric: str, mode: str, metrics: dict[str, float], value: float, uri: str) -> Promotion:
    bound_http_retries()  # as for training: a dead server costs seconds, and no progress bars in the log
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = model_name(config)
    # The registry is the tracking store too, whatever MLFLOW_REGISTRY_URI the environment holds.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = config.logging.mlflow.experiment or name
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=artifact_location(uri))
    digest = hashlib.sha256(run.best.read_bytes()).hexdigest() if run.best.is_file() else ""
    # Promoting the same weights again (a retried task, a re-run) reuses their version instead of adding one.
    tags = {TAG_METRIC: metric, TAG_VALUE: repr(value), TAG_RUN_DIR: str(run.root.resolve()), TAG_WEIGHTS: digest}
    version = _existing_version(client, name, digest)
    if version is None:
        version = _register(run, name, experiment, metrics, tags)
    else:  # the same weights promoted again: their tags say this promotion (run dir, metric) now
        for key, tag in tags.items():
            client.set_model_version_tag(name, str(version), key, tag)

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    old = _tagged_value(champion.tags, metric) if champion is not None else None
    already = champion is not None and int(champion.version) == version
    if already:
        promoted, old = True, value
    else:
        promoted = champion is None or old is None or better(value, old, mode)
    client.set_registered_model_alias(name, CHAMPION if promoted else CHALLENGER, str(version))
    client.set_model_version_tag(name, str(version), "taktstock.promoted", str(promoted).lower())
    return Promotion(name, version, metric, value, old, promoted, uri, already_champion=already)


def _existing_version(client: Any, name: str, digest: str) -> int | None:
    from mlflow.exceptions import MlflowException

    if not digest:
        return None
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    same = [int(v.version) for v in versions if v.tags.get(TAG_WEIGHTS) == digest]
    return max(same) if same else None


def _tagged_value(tags: dict[str, str], metric: str) -> float | None:
    """The champion's value of `metric`; None when it was promoted on another metric (not comparable)."""
    if tags.get(TAG_METRIC) != metric:
        return None
    try:
        return float(tags[TAG_VALUE])
    except (KeyError, ValueError):
        return None


def _register(run: RunDir, name: str, experiment: str, metrics: dict[str, float], tags: dict[str, str]) -> int:
    """Log the traced inference model (raw features in, normalisation inside) as a new version of `name`.

    The version is created with its tags (the weights' digest among them), so an attempt that dies right after
    registering still leaves a version the next attempt recognises."""
    import mlflow

    from taktstock.tracking.mlflow_model import log_inference_model

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run.root.name) as active:
        mlflow.set_tags({"taktstock.run_dir": str(run.root.resolve()), "taktstock.stage": "promote"})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        info = log_inference_model(run.root)
        mlflow.log_artifact(str(run.preprocessing))
    version = mlflow.register_model(info.model_uri, name, tags=tags).version
    if version is None:
        raise UserError(f"MLflow did not register {name} (run {active.info.run_id})")
    return int(version)
