"""MLflow tracking end to end: a real `mlflow server` and the embedded SQLite default, through the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli_env, require, run_cli, tiny_config, write_config

from taktstock.tracking.jsonl import read_metrics
from taktstock.utils.dicts import flatten_dict

require("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mlflow server` on 127.0.0.1:<free port> with a SQLite backend; stopped by its PID (process group)."""
    port = _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    env = cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "artifacts")]
    log = open(tmp / "server.log", "wb")  # closed in finally
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as (uri, _proc):
        yield uri


def _git_init(path: Path) -> str:
    """Make the work dir a git checkout so the git tags can be checked against `git rev-parse`."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=path, check=True)
    (path / ".gitignore").write_text("experiments/\ndata/\n")
    subprocess.run([*git, "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=path, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True).stdout.strip()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.parametrize("backend", ["server", "embedded"])
def test_train_and_evaluate_log_params_metrics_artifacts_and_registered_model(backend: str, workdir: Path, request) -> None:
    mlflow_cfg: dict = {"enabled": True, "register_model": True, "experiment": f"digits-{backend}"}
    if backend == "server":
        mlflow_cfg["tracking_uri"] = request.getfixturevalue("server")
    cfg = tiny_config(logging={"tensorboard": False, "plots": True, "mlflow": mlflow_cfg}, train={"epochs": 2, "log_every_n_steps": 4})
    write_config(workdir / "exp.yaml", cfg)
    commit = _git_init(workdir)
    run_cli("train", "exp.yaml", "--run-dir", "run", "--evaluate", cwd=workdir, check=True)

    info = json.loads((workdir / "run" / "run.json").read_text())["mlflow"]
    uri = mlflow_cfg.get("tracking_uri") or f"sqlite:///{workdir / 'experiments' / 'mlflow.db'}"
    assert info["tracking_uri"] == uri
    client = _client(uri)
    exp = client.get_experiment_by_name(f"digits-{backend}")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [info["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"

    # params: the flattened resolved config
    resolved = flatten_dict(yaml.safe_load((workdir / "run" / "config.yaml").read_text()))
    assert run.data.params == {k: str(v) for k, v in resolved.items()}
    # tags: provenance
    assert run.data.tags["git.commit"] == commit
    assert run.data.tags["git.dirty"] == "false"
    assert run.data.tags["host"] == socket.gethostname()
    assert run.data.tags["taktstock.version"] == __import__("taktstock").__version__

    # metrics: every logged point of metrics.jsonl, exactly, at its step
    records = read_metrics(workdir / "run" / "metrics.jsonl")
    keys = {k for r in records for k in r if k not in ("step", "epoch")}
    assert keys <= set(run.data.metrics)
    for key in keys:
        expected = [(r["step"], r[key]) for r in records if key in r]
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == expected, key
    # evaluate logged into the same run
    evaluated = json.loads((workdir / "run" / "eval" / "metrics.json").read_text())["metrics"]
    assert {k: run.data.metrics[k] for k in evaluated} == evaluated

    # artifacts
    def listing(path: str | None = None) -> set[str]:
        return {a.path for a in client.list_artifacts(run.info.run_id, path)}

    assert {"config.yaml", "plots", "eval", "preprocessing.json"} <= listing()
    assert "plots/learning_curves.png" in listing("plots")
    assert {"eval/metrics.json", "eval/confusion_matrix.png", "eval/report.json"} <= listing("eval")
    local = client.download_artifacts(run.info.run_id, "eval/metrics.json", str(workdir))
    assert Path(local).read_bytes() == (workdir / "run" / "eval" / "metrics.json").read_bytes()

    # registered model: version 1 of the experiment's name, from this run; raw rows in, the inference model's probabilities out
    versions = client.search_model_versions(f"name='digits-{backend}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
    import mlflow
    import mlflow.pyfunc
    import torch
    from sklearn.datasets import load_digits

    from taktstock.deploy.model import load_run

    os.chdir(workdir)
    raw = load_digits().data[:16].astype(np.float32)
    with torch.no_grad():
        expected_out = load_run(workdir / "run", "best").model(torch.from_numpy(raw)).numpy()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/digits-{backend}/1")
    assert pyfunc.metadata.signature is not None
    assert np.allclose(np.asarray(pyfunc.predict(raw)), expected_out, atol=1e-6)


def test_training_and_promote_register_one_contract_raw_rows_in_probabilities_out(workdir: Path) -> None:
    """register_model=true and `taktstock promote` add versions of one registered model that answer alike."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow_cfg = {"enabled": True, "register_model": True, "tracking_uri": uri}
    write_config(workdir / "exp.yaml", tiny_config(logging={"tensorboard": False, "plots": False, "mlflow": mlflow_cfg}))
    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir, check=True)
    run_cli("promote", "run", cwd=workdir, check=True)

    import mlflow
    import mlflow.pyfunc
    from sklearn.datasets import load_digits

    client = _client(uri)
    versions = sorted(client.search_model_versions("name='tiny'"), key=lambda v: int(v.version))
    assert [(int(v.version), v.tags.get("taktstock.weights_sha256") is not None) for v in versions] == [(1, False), (2, True)]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    trained, promoted = (mlflow.pyfunc.load_model(f"models:/tiny/{v}") for v in ("1", "2"))
    assert trained.metadata.signature.to_dict() == promoted.metadata.signature.to_dict()
    raw = load_digits().data[:32].astype(np.float32)  # (32, 64) raw pixel counts, as predict reads them
    out = np.asarray(trained.predict(raw))
    assert out.shape == (32, 10) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)  # probabilities
    assert np.array_equal(out, np.asarray(promoted.predict(raw)))


KILL_CALLBACK = '''
import os, signal, time

class KillServerAt:
    """Kills the MLflow tracking server (its process group) during training."""
    def on_step_end(self, trainer):
        if trainer.state.step == int(os.environ["KILL_AT_STEP"]):
            os.killpg(int(os.environ["SERVER_PID"]), signal.SIGKILL)
            time.sleep(0.5)
'''


def test_tracking_server_killed_mid_run_does_not_stop_training(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    (workdir / "killer.py").write_text(KILL_CALLBACK)
    with mlflow_server(tmp_path_factory.mktemp("doomed-server")) as (uri, proc):
        cfg = tiny_config(
            logging={"tensorboard": False, "plots": False, "mlflow": {"enabled": True, "tracking_uri": uri}},
            train={"epochs": 2, "log_every_n_steps": 2, "callbacks": ["killer:KillServerAt"]},
        )
        write_config(workdir / "exp.yaml", cfg)
        t0 = time.monotonic()
        result = run_cli(
            "train", "exp.yaml", "--run-dir", "run", cwd=workdir, env=cli_env(KILL_AT_STEP="6", SERVER_PID=str(proc.pid)), timeout=180
        )
        elapsed = time.monotonic() - t0
        assert proc.poll() is not None  # the server really is gone
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tracker 'mlflow' failed") == 1, result.stderr
    records = read_metrics(workdir / "run" / "metrics.jsonl")
    steps = json.loads((workdir / "run" / "run.json").read_text())["steps"]
    assert [r["step"] for r in records if "train/loss_step" in r] == list(range(2, steps + 1, 2))
    assert records[-1]["step"] == steps and "val/acc" in records[-1]
    assert elapsed < 90  # bounded retries: a dead server costs seconds, not minutes


def test_unreachable_server_at_start_is_exit_2_unless_fail_soft(workdir: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = tiny_config(
        logging={"tensorboard": False, "plots": False, "mlflow": {"enabled": True, "tracking_uri": dead}}, train={"epochs": 1}
    )
    write_config(workdir / "exp.yaml", cfg)
    t0 = time.monotonic()
    result = run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.startswith("error: logging.mlflow.tracking_uri:") and dead in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - t0 < 60
    assert not (workdir / "run").exists()  # checked before the run directory is created

    result = run_cli("train", "exp.yaml", "--run-dir", "run", "logging.fail_soft=true", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and dead in result.stderr
    assert json.loads((workdir / "run" / "run.json").read_text())["status"] == "completed"
    assert "mlflow" not in json.loads((workdir / "run" / "run.json").read_text())


def test_parent_run_id_makes_the_run_a_child_run(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'experiments' / 'mlflow.db'}"
    (workdir / "experiments").mkdir()
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("sweep"), run_name="sweep-parent").info.run_id
    cfg = tiny_config(
        logging={"tensorboard": False, "plots": False, "mlflow": {"enabled": True, "log_model": False, "experiment": "sweep"}},
        train={"epochs": 1, "max_steps": 2},
    )
    write_config(workdir / "exp.yaml", cfg)
    run_cli("train", "exp.yaml", "--run-dir", "child", f"logging.mlflow.parent_run_id={parent}", cwd=workdir, check=True)
    child = json.loads((workdir / "child" / "run.json").read_text())["mlflow"]["run_id"]
    assert child != parent
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(child).info.experiment_id == client.get_run(parent).info.experiment_id
