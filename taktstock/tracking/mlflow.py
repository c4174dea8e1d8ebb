"""MLflow tracking: params, tags, batched metrics, artifacts and the best model of a run.

Default backend is embedded (no server): SQLite at experiments/mlflow.db, artifacts under
experiments/mlartifacts. An http(s) tracking_uri talks to a real tracking server.

Metrics go through one background thread that batches them into `log_batch` requests (at most one
per logging call), so a slow server never stalls the training loop; an error there is raised on the next call and the
`TrackerGroup` reports it once and carries on without MLflow.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taktstock.errors import UserError
from taktstock.tracking.provenance import provenance
from taktstock.utils.dicts import flatten_dict
from taktstock.utils.imports import optional_import

if TYPE_CHECKING:
    from taktstock.config.schema import Config
    from taktstock.run_dir import RunDir

EMBEDDED_DB = Path("experiments/mlflow.db")
EMBEDDED_ARTIFACTS = Path("experiments/mlartifacts")
PROBE_TIMEOUT_S = 5.0
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch request
_PARAM_MAX_LEN = 6000
_METRIC_BATCH = 1000  # MLflow's limit of metrics per log_batch request
_STOP = object()


def bound_http_retries() -> None:
    """MLflow retries a failing request for minutes by default; a dead server should cost seconds.

    Only defaults: a user's own MLFLOW_HTTP_REQUEST_* settings win.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Logging a model re-reads its files with a tqdm bar: carriage-return noise in every log of train/promote.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_tracking_uri(uri: str | None) -> str:
    """The configured URI with relative SQLite paths made absolute (evaluate may run elsewhere)."""
    if not uri:
        EMBEDDED_DB.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{EMBEDDED_DB.resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def tracking_uri_for(config: Config) -> str:
    """The one place taktstock decides where MLflow data lives (training, evaluate, tune, promote):
    logging.mlflow.tracking_uri, else the embedded SQLite store; never MLflow's ./mlruns file store.
    $MLFLOW_TRACKING_URI is deliberately not read: mlflow.set_tracking_uri() sets it process-wide,
    so one in-process run would silently redirect the next."""
    return resolve_tracking_uri(config.logging.mlflow.tracking_uri)


def artifact_location(uri: str) -> str | None:
    """Local artifact root for a SQLite backend (next to the database); servers choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        root = EMBEDDED_ARTIFACTS.resolve() if db == EMBEDDED_DB.resolve() else db.parent / "mlartifacts"
        return root.as_uri()
    return None


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise UserError when an http(s) tracking server does not answer /health within `timeout` seconds."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # an authenticating proxy in front of a live server
            return
        problem = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise UserError(
        f"logging.mlflow.tracking_uri: MLflow tracking server {uri} cannot be reached ({problem}); "
        "start it, fix the URI, or set logging.fail_soft: true to train without MLflow"
    )


def _client(uri: str) -> Any:
    bound_http_retries()
    optional_import("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, name: str, uri: str) -> str:
    """Id of the named experiment, created (with local artifacts for SQLite) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except Exception:
        exp = client.get_experiment_by_name(name)  # created concurrently by another run (parallel trials)
        if exp is None:
            raise
        return exp.experiment_id


def freeze_gc() -> None:
    """Move everything allocated so far out of the cyclic GC's reach.

    Importing MLflow (SQLAlchemy, pydantic, ...) adds ~250k long-lived objects; without this, each
    full GC pass in the training loop rescans them (about +0.1 s per pass on a small CPU), which
    was most of MLflow's overhead on the digits benchmark. Frozen objects are still freed by
    reference counting.
    """
    gc.collect()
    gc.freeze()


class _MetricWriter:
    """Background thread that sends metrics with `log_batch`, keeping the first error.

    Points logged within SEND_INTERVAL_S of each other go out in one request: at most one request
    per logging call, and far fewer when training logs often, so tracking costs the loop almost
    nothing. `flush()` sends at once (end of training, before the model is logged).
    """

    SEND_INTERVAL_S = 1.0

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.queue: queue.Queue[Any] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="taktstock-mlflow", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from mlflow.entities import Metric

        pending: list[Any] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = None  # the send interval has passed
            if isinstance(item, tuple):
                metrics, step, ts = item
                pending += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
                deadline = deadline or time.monotonic() + self.SEND_INTERVAL_S
                if len(pending) < _METRIC_BATCH:
                    continue
            self._send(pending)
            pending, deadline = [], None
            if isinstance(item, threading.Event):
                item.set()
            elif item is _STOP:
                return

    def _send(self, batch: list[Any]) -> None:
        if self.error is not None:
            return
        try:
            for i in range(0, len(batch), _METRIC_BATCH):
                self.client.log_batch(self.run_id, metrics=batch[i : i + _METRIC_BATCH])
        except BaseException as exc:
            self.error = exc

    def put(self, metrics: dict[str, float], step: int) -> None:
        self.queue.put((dict(metrics), step, int(time.time() * 1000)))

    def flush(self, timeout: float = 60.0) -> None:
        done = threading.Event()
        self.queue.put(done)
        done.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        self.queue.put(_STOP)
        self.thread.join(timeout)


class MlflowTracker:
    """One MLflow run per run directory; resume continues it (run id kept in checkpoints and run.json)."""

    name = "mlflow"

    def __init__(self, config: Config, run: RunDir) -> None:
        self.cfg = config.logging.mlflow
        self.config = config
        self.run = run
        self.uri = tracking_uri_for(config)
        self.experiment = self.cfg.experiment or config.experiment.name
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.writer: _MetricWriter | None = None
        self._finished = False
        self.system_monitor: Any = None
        self.logged_upto: dict[str, int] = {}  # metric -> last step already in the MLflow run (before a resume)

    def preflight(self) -> None:
        probe(self.uri)

    def start(self, config: dict[str, Any], resume_state: dict[str, Any] | None, step: int) -> None:
        self.client = _client(self.uri)
        previous = resume_state or {}
        if not previous and step > 0:  # checkpoint written before MLflow was enabled: reuse run.json's run if any
            previous = self.run.read_info().get("mlflow") or {}
        if previous.get("run_id") and previous.get("tracking_uri", self.uri) == self.uri:
            self.run_id = previous["run_id"]
            self.experiment_id = previous.get("experiment_id")
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_upto = self._last_logged_steps()
        else:
            self.experiment_id = experiment_id(self.client, self.experiment, self.uri)
            tags = provenance() | dict(self.config.experiment.tags) | {"taktstock.run_dir": str(self.run.root.resolve())}
            tags["mlflow.source.name"] = "taktstock"
            if "git.commit" in tags:
                tags["mlflow.source.git.commit"] = tags["git.commit"]
            if self.cfg.parent_run_id:
                tags["mlflow.parentRunId"] = self.cfg.parent_run_id
            created = self.client.create_run(self.experiment_id, run_name=self.run.root.name, tags=tags)
            self.run_id = created.info.run_id
            self._log_params(config)
        self.run.update_info(mlflow=self.state())
        self.writer = _MetricWriter(self.client, self.run_id)
        if self.cfg.system_metrics:
            self._start_system_metrics(resumed=bool(previous.get("run_id")))
        freeze_gc()

    def _start_system_metrics(self, resumed: bool) -> None:
        """MLflow's own monitor (a thread sampling psutil and, with pynvml, the GPUs) into this run."""
        if importlib.util.find_spec("psutil") is None:
            print("warning: logging.mlflow.system_metrics needs psutil (pip install psutil); no system metrics", file=sys.stderr)
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its INFO lines say "started"/"stopped" only

        self.system_monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=self.cfg.system_metrics_interval_s, resume_logging=resumed, tracking_uri=self.uri
        )
        self.system_monitor.start()

    def _stop_system_metrics(self) -> None:
        monitor, self.system_monitor = self.system_monitor, None
        if monitor is None:
            return
        monitor.finish()
        # The monitor publishes only after a full interval: a run shorter than that would show an empty tab.
        # Not to a server that already failed (each request would wait out its retries).
        last = monitor.aggregate_metrics()
        if last and (self.writer is None or self.writer.error is None):
            monitor.publish_metrics(last)
            monitor.mlflow_logger.flush()

    def log_dataset(self, dataset: dict[str, Any]) -> None:
        """The training data as the run's dataset input, once per split (MLflow's Datasets panel)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        path = dataset.get("path")
        source = resolve_dataset_source(path) if path else CodeDatasetSource({"taktstock.data.source": dataset["source"]})
        # MLflow links a dataset (name, digest) to a run once: each split is its own dataset, its digest
        # the data's fingerprint with the split's name.
        inputs = [
            DatasetInput(
                MetaDataset(source, name=dataset["name"], digest=f"{dataset['digest'][:16]}-{split}")._to_mlflow_entity(),
                tags=[InputTag("mlflow.data.context", split), InputTag("taktstock.num_samples", str(n))],
            )
            for split, n in dataset["splits"].items()
            if n
        ]
        self.client.log_inputs(self.run_id, datasets=inputs)

    def _log_params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_PARAM_MAX_LEN]) for k, v in sorted(flatten_dict(config).items())]
        for i in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _PARAM_BATCH])

    def _last_logged_steps(self) -> dict[str, int]:
        """Highest step already logged per metric, so a resumed run does not log the steps after its
        checkpoint twice. Resume is exact: the values it would log again are the ones already there."""
        keys = self.client.get_run(self.run_id).data.metrics
        return {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1) for k in keys}

    def _raise_pending(self) -> None:
        if self.writer is not None and self.writer.error is not None:
            raise self.writer.error

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._raise_pending()
        if self.logged_upto:
            metrics = {k: v for k, v in metrics.items() if step > self.logged_upto.get(k, -1)}
        if metrics and self.writer is not None:
            self.writer.put(metrics, step)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_text(self, name: str, text: str, step: int) -> None:
        """Text as the artifact NAME/step_STEP.txt (e.g. samples/step_200.txt)."""
        self.client.log_text(self.run_id, text, f"{name}/step_{step}.txt")

    def log_run_outputs(self, run: RunDir, final: dict[str, float]) -> None:
        """End of training: resolved config, plots and the best model."""
        if self.writer is not None:
            self.writer.flush()
            self._raise_pending()
        self.client.log_artifact(self.run_id, str(run.config))
        if run.preprocessing.is_file():
            self.client.log_artifact(self.run_id, str(run.preprocessing))
        if run.plots.is_dir():
            self.client.log_artifacts(self.run_id, str(run.plots), "plots")
        if self.cfg.log_model:
            self._log_best_model(run)

    def _log_best_model(self, run: RunDir) -> None:
        """The best model, in the contract `taktstock promote` registers (raw features in, probabilities out)."""
        import mlflow

        from taktstock.errors import ConfigError
        from taktstock.tracking.mlflow_model import log_inference_model

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        name = self.experiment if self.cfg.register_model else None
        with mlflow.start_run(run_id=self.run_id):
            try:
                info = log_inference_model(run.root, registered_model_name=name, await_registration_for=30)
            except ConfigError:  # samples that are not float feature rows (token ids, dicts): the network as trained
                info = self._log_network(run, name)
        fields: dict[str, Any] = {"model_uri": info.model_uri}
        if self.cfg.register_model and info.registered_model_version is not None:
            fields["registered_model"] = f"models:/{self.experiment}/{info.registered_model_version}"
        self.run.update_info(mlflow=self.state() | fields)

    def _log_network(self, run: RunDir, name: str | None) -> Any:
        """The trained network itself, its inputs as the split's batches give them (inside the active run)."""
        import mlflow.pytorch
        import torch

        import taktstock
        from taktstock.checkpoint.trained import load_trained_model
        from taktstock.data.loaders import eval_batches
        from taktstock.data.prepare import prepare

        trained = load_trained_model(run, "best")
        model, data = trained.model, prepare(trained.config)
        split = data.split("val") if len(data.split("val")) else data.split("train")
        inputs = next(eval_batches(split, 4))
        inputs = {k: v for k, v in inputs.items() if k != "labels"} if isinstance(inputs, dict) else inputs[0]
        # The signature is inferred from the example: float features stay float32, token ids int64.
        example = {k: v.numpy() for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.numpy()
        # Explicit requirements: inferring them would load the model in a subprocess (slow).
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"taktstock=={taktstock.__version__}"]
        return mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=name,
            await_registration_for=30,
        )

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": self.experiment_id}

    def finish(self, status: str) -> None:
        with contextlib.suppress(Exception):  # system metrics are a nice-to-have: never fail a run's finish
            self._stop_system_metrics()
        pending = None
        if self.writer is not None:
            self.writer.close()
            self.writer, pending = None, self.writer.error
        if self.run_id is not None and self.client is not None and not self._finished:
            self._finished = True
            self.client.set_terminated(self.run_id, status)
        if pending is not None:
            raise pending


def log_evaluation(run: RunDir, config: Config, metrics: dict[str, float], split: str) -> None:
    """Log evaluate's metrics and report files into the training run's MLflow run (when it has one)."""
    info = run.read_info().get("mlflow") or {}
    if not config.logging.mlflow.enabled or not info.get("run_id"):
        return
    uri = info.get("tracking_uri") or tracking_uri_for(config)
    try:
        probe(uri)
    except UserError as exc:
        if not config.logging.fail_soft:
            raise UserError(f"{exc} (the evaluation itself is saved in {run.eval_dir})") from None
        print(f"warning: {exc}; evaluation not logged to MLflow", file=sys.stderr)
        return
    from mlflow.entities import Metric

    client = _client(uri)
    step, ts = int(run.read_info().get("steps") or 0), int(time.time() * 1000)
    client.log_batch(info["run_id"], metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
    client.log_artifacts(info["run_id"], str(run.eval_dir), "eval")
