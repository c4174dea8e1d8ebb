"""The generated Airflow DAG runs prepare -> train -> evaluate -> promote with `airflow dags test`."""

from __future__ import annotations

import ast
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, tiny_config, write_config

pytestmark = pytest.mark.airflow


def _airflow() -> Path:
    path = Path(os.environ.get("AIRFLOW_BIN") or REPO / ".venv-airflow/bin/airflow")
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"airflow not found at {path} (CI builds .venv-airflow with make)")
        pytest.skip(f"airflow not found at {path}; set AIRFLOW_BIN or run make")
    return path


def test_generated_dag_is_valid_python_with_the_documented_schedule_and_retries(workdir: Path) -> None:
    config = tiny_config(experiment={"name": "my exp/1"}, pipeline={"schedule": "@daily", "retries": 3, "retry_delay_s": 30})
    write_config(workdir / "c.yaml", config)
    run_cli("pipeline", "airflow", "c.yaml", "--out", "dags", cwd=workdir, check=True)
    text = (workdir / "dags/taktstock_my_exp_1.py").read_text()
    ast.parse(text)
    assert "dag_id='taktstock_my_exp_1'" in text and "schedule='@daily'" in text
    assert '"retries": 3' in text and "timedelta(seconds=30)" in text and "tzinfo=timezone.utc" in text and "catchup=False" in text
    assert f"cd {workdir}" in text


def test_airflow_dags_test_runs_every_task_and_registers_the_model(tmp_path: Path) -> None:
    airflow = _airflow()
    project, dags, home = tmp_path / "project", tmp_path / "dags", tmp_path / "airflow"
    project.mkdir()
    db = tmp_path / "mlflow.db"
    config = tiny_config(logging={"tensorboard": False, "plots": False, "mlflow": {"tracking_uri": f"sqlite:///{db}"}})
    write_config(project / "tiny.yaml", config)
    run_cli("pipeline", "airflow", "tiny.yaml", "--out", str(dags), cwd=project, check=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
    env |= {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    for cmd in (["db", "migrate"], ["dags", "test", "taktstock_tiny"]):
        proc = subprocess.run([str(airflow), *cmd], env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, f"airflow {' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    with sqlite3.connect(home / "airflow.db") as con:
        states = dict(con.execute("select task_id, state from task_instance where dag_id = 'taktstock_tiny'").fetchall())
    assert states == {"prepare": "success", "train": "success", "evaluate": "success", "promote": "success"}

    (run,) = (project / "experiments/pipeline/tiny").iterdir()
    metrics = json.loads((run / "eval/metrics.json").read_text())["metrics"]
    promotion = json.loads((run / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["value"] == pytest.approx(metrics["test/acc"], abs=0)

    from mlflow import MlflowClient

    version = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}").get_model_version_by_alias("tiny", "champion")
    assert int(version.version) == promotion["version"] and version.tags["taktstock.run_dir"] == str(run.resolve())


def test_airflow_generator_rejects_a_malformed_start_date(workdir: Path) -> None:
    write_config(workdir / "c.yaml", tiny_config(pipeline={"start_date": "01/02/2026"}))
    proc = run_cli("pipeline", "airflow", "c.yaml", "--out", "dags", cwd=workdir)
    assert proc.returncode == 2 and "pipeline.start_date" in proc.stderr and not (workdir / "dags").exists()
