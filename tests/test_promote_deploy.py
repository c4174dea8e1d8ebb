"""Promotion in the MLflow Model Registry, export (ONNX, TorchScript, safetensors), batch predict and serving."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli_env, run_cli, tiny_config, write_config


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trained runs of one experiment: 'bad' (one epoch at a tiny learning rate) and 'good'."""
    root = tmp_path_factory.mktemp("deploy")
    db = root / "mlflow.db"
    config = tiny_config(
        experiment={"name": "digits-tiny"}, logging={"tensorboard": False, "plots": False, "mlflow": {"tracking_uri": f"sqlite:///{db}"}}
    )
    write_config(root / "c.yaml", config)
    run_cli("train", "c.yaml", "train.epochs=1", "optim.lr=0.0002", "--run-dir", "bad", cwd=root, check=True)
    run_cli("train", "c.yaml", "train.epochs=4", "--run-dir", "good", cwd=root, check=True)
    return root


def _acc(run: Path) -> float:
    return json.loads((run / "promotion.json").read_text())["value"]


def test_better_run_takes_champion_alias_and_worse_run_does_not(project: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)  # explicit: another test may have set the process-wide one
    first = run_cli("promote", "bad", cwd=project, check=True)
    assert "promoted to champion" in first.stdout  # no champion yet
    assert client.get_model_version_by_alias("digits-tiny", "champion").tags["taktstock.run_dir"] == str((project / "bad").resolve())
    # promote evaluated the run itself (eval/metrics.json was missing) and compares the test metric
    assert json.loads((project / "bad/eval/metrics.json").read_text())["metrics"]["test/acc"] == _acc(project / "bad")

    second = run_cli("promote", "good", cwd=project, check=True)
    assert _acc(project / "good") > _acc(project / "bad"), "the fixture's runs must differ in quality"
    assert "promoted to champion" in second.stdout
    champion = client.get_model_version_by_alias("digits-tiny", "champion")
    assert champion.tags["taktstock.run_dir"] == str((project / "good").resolve())
    assert float(champion.tags["taktstock.metric_value"]) == _acc(project / "good")

    third = run_cli("promote", "bad", cwd=project, check=True)  # the worse model again: recorded, not promoted
    assert "kept as challenger" in third.stdout
    assert client.get_model_version_by_alias("digits-tiny", "champion").version == champion.version
    challenger = client.get_model_version_by_alias("digits-tiny", "challenger")
    assert challenger.tags["taktstock.run_dir"] == str((project / "bad").resolve())
    assert len(client.search_model_versions("name = 'digits-tiny'")) == 2  # same weights reuse their version
    assert json.loads((project / "bad/promotion.json").read_text())["promoted"] is False

    again = run_cli("promote", "good", cwd=project, check=True)  # the champion's own weights: nothing changes
    assert "already the champion" in again.stdout and "promoted to champion" not in again.stdout
    assert client.get_model_version_by_alias("digits-tiny", "champion").version == champion.version


def test_concurrent_promotes_of_one_run_register_one_version(tmp_path: Path) -> None:
    """An Airflow retry can start while the first attempt still runs: both must agree on one version."""
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    config = tiny_config(
        experiment={"name": "twice"}, logging={"tensorboard": False, "plots": False, "mlflow": {"tracking_uri": f"sqlite:///{db}"}}
    )
    write_config(tmp_path / "c.yaml", config)
    run_cli("train", "c.yaml", "train.epochs=1", "--run-dir", "run", cwd=tmp_path, check=True)
    cmd = [sys.executable, "-m", "taktstock", "promote", "run"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted("already the champion" in out for out in outs) == [False, True], outs
    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    (version,) = client.search_model_versions("name = 'twice'")
    assert client.get_model_version_by_alias("twice", "champion").version == version.version
    assert json.loads((tmp_path / "run/promotion.json").read_text())["version"] == int(version.version)


def _rows(project: Path, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Raw (un-normalised) digits rows of the run's test split and their indices."""
    import sklearn.datasets

    from taktstock.config.loader import load_config
    from taktstock.data.prepare import _split_indices

    bunch = sklearn.datasets.load_digits()
    test = _split_indices(load_config(project / "good/config.yaml"), bunch.target.astype(np.int64))["test"][:n]
    return bunch.data[test].astype(np.float32), test


def _reference(project: Path, n: int = 40) -> torch.Tensor:
    """The trained model's probabilities on the prepared (normalised by taktstock) test split."""
    from taktstock.evaluation.evaluate import load_trained_model
    from taktstock.run_dir import RunDir

    _, data, model = load_trained_model(RunDir(project / "good"))
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(data.split("test").x[:n])), dim=-1)


def test_predict_csv_applies_the_stored_normalisation_and_matches_the_model_on_the_test_split(project: Path) -> None:
    import sklearn.datasets

    raw, idx = _rows(project)
    names = list(sklearn.datasets.load_digits().feature_names)
    header = ["row", *reversed(names)]  # columns out of order plus an id column: matched by name
    with (project / "in.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, row in zip(idx, raw, strict=True):
            writer.writerow([int(i), *reversed(row.tolist())])
    run_cli("predict", "good", "in.csv", "--out", "preds.csv", cwd=project, check=True)
    with (project / "preds.csv").open() as f:
        got = list(csv.DictReader(f))
    expected = _reference(project)
    assert [r["prediction"] for r in got] == [str(int(k)) for k in expected.argmax(1)]
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in range(10)] for r in got])
    assert torch.allclose(probs, expected, atol=1e-5)

    np.savez(project / "in.npz", x=raw.reshape(-1, 1, 8, 8))
    npz = run_cli("predict", "good", "in.npz", cwd=project, check=True)
    assert [line.split(",")[0] for line in npz.stdout.splitlines()[1:]] == [r["prediction"] for r in got]


def test_predict_names_missing_feature_columns(project: Path) -> None:
    (project / "bad.csv").write_text("a,b\n1,2\n")
    proc = run_cli("predict", "good", "bad.csv", cwd=project)
    assert proc.returncode == 2 and "missing feature column(s) pixel_0_0" in proc.stderr and "Traceback" not in proc.stderr


def test_onnx_export_matches_pytorch_on_a_test_batch(project: Path) -> None:
    import onnxruntime as ort

    run_cli("export", "good", "--format", "onnx", "--out", "m.onnx", cwd=project, check=True)
    raw, _ = _rows(project)
    session = ort.InferenceSession(str(project / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["y"], {"x": raw})[0])
    assert got.shape == (len(raw), 10)
    assert (got - _reference(project)).abs().max() <= 1e-4


def test_torchscript_and_safetensors_exports_reload_with_identical_outputs(project: Path) -> None:
    from safetensors import safe_open

    from taktstock.deploy.model import load_run

    run_cli("export", "good", "--format", "torchscript", cwd=project, check=True)
    run_cli("export", "good", "--format", "safetensors", "--checkpoint", "last", cwd=project, check=True)
    raw, _ = _rows(project)
    x = torch.from_numpy(raw)
    scripted = torch.jit.load(str(project / "good/export/model.pt"))
    with torch.no_grad():
        assert torch.equal(scripted(x), load_run(project / "good").model(x))

    last = load_run(project / "good", "last").model.state_dict()
    with safe_open(str(project / "good/export/model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(last) and all(torch.equal(f.get_tensor(k), last[k]) for k in last)
        meta = f.metadata()
    assert json.loads(meta["taktstock.preprocessing"]) == json.loads((project / "good/preprocessing.json").read_text())


def test_export_rejects_an_unknown_format(project: Path) -> None:
    proc = run_cli("export", "good", "--format", "tflite", cwd=project)
    assert proc.returncode == 2 and "--format" in proc.stderr and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registered_champion_serves_http_predictions(project: Path) -> None:
    if not (project / "good/promotion.json").exists():
        run_cli("promote", "good", cwd=project, check=True)
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}", PATH=os.pathsep.join([bin_dir, os.environ["PATH"]]))
    env.pop("PYTHONPATH")  # the registered model is a torch.export program: no taktstock code needed to serve it
    cmd = [f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/digits-tiny@champion", "--env-manager", "local"]
    log = (project / "serve.log").open("w")
    server = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, (project / "serve.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not answer /ping in time"
                time.sleep(1)
        raw, _ = _rows(project, 8)
        body = json.dumps({"inputs": raw.tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        got = torch.tensor(answer["predictions"])
        assert torch.allclose(got, _reference(project, 8), atol=1e-5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def test_promote_names_an_unknown_promote_metric(project: Path) -> None:
    import shutil

    import yaml

    shutil.copytree(project / "good", project / "odd", ignore=shutil.ignore_patterns("checkpoints", "export"))
    config = yaml.safe_load((project / "odd/config.yaml").read_text())
    config["pipeline"]["promote_metric"] = "test/auroc"
    (project / "odd/config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("promote", "odd", cwd=project)
    assert proc.returncode == 2 and "'test/auroc' is not among the test metrics" in proc.stderr and "Traceback" not in proc.stderr
