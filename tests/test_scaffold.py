"""`taktstock new`: a generated project trains, evaluates and passes its own tests as generated."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, cli_env, run_cli

# Overrides that keep each example's run short; regression trains its full config (its R2 is checked).
FAST = {"tabular": ["train.epochs=8"], "image": ["train.epochs=2"], "regression": []}


def _python(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("example", ["tabular", "image", "regression"])
def test_new_project_trains_evaluates_and_passes_its_own_tests(tmp_path: Path, example: str) -> None:
    project = tmp_path / f"my-{example}"
    run_cli("new", str(project), "--example", example, check=True)
    for rel in ("data/__init__.py", "data/preprocess.py", "data/dataset.py", "models/net.py", "utils/runs.py", "tests", "experiments"):
        assert (project / rel).exists(), rel
    requirements = (project / "requirements.txt").read_text()
    # The project pins torch and torchvision exactly as taktstock's own environment does.
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2 and all(pin in requirements.splitlines() for pin in pins), (pins, requirements)
    assert "taktstock>=" in requirements

    if example == "tabular":
        # The CLI run from the project directory imports the project's top-level `data` and `models` packages.
        dry = run_cli("train", "config.yaml", "--dry-run", cwd=project, check=True).stdout
        assert "# model: models.net:TabularNet" in dry and "batch: ((32, 13) float32, (32,) int64)" in dry
        assert not (project / "experiments" / "runs").exists()

    # Started from elsewhere: train.py and evaluate.py work relative to the project, not the caller.
    _python(str(project / "train.py"), "logging.tensorboard=false", *FAST[example], cwd=tmp_path)
    runs = sorted((project / "experiments" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "best.safetensors").is_file()
    out = _python("evaluate.py", cwd=project).stdout
    assert str(runs[0]) in out
    metrics = json.loads((runs[0] / "eval" / "metrics.json").read_text())["metrics"]
    if example == "regression":
        assert metrics["test/r2"] > 0.3, metrics
        # predict reports disease progression in the CSV's unit: the dataset's predictions(values) undoes target_scale.
        rows = project / "data" / "processed" / "diabetes.csv"
        out = run_cli("predict", str(runs[0]), str(rows), cwd=project, check=True).stdout
        predicted = np.array([float(line) for line in out.splitlines()[1:]])
        target = np.array([float(r["progression"]) for r in csv.DictReader(rows.open())])
        r2 = 1 - ((predicted - target) ** 2).sum() / ((target - target.mean()) ** 2).sum()
        assert len(predicted) == len(target) and r2 > 0.3, r2
    else:
        assert metrics["test/acc"] > 0.8, metrics

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_evaluate_without_runs_says_to_train_first(tmp_path: Path) -> None:
    project = tmp_path / "fresh"
    run_cli("new", str(project), check=True)
    proc = subprocess.run([sys.executable, "evaluate.py"], cwd=project, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no runs in" in proc.stderr and "python train.py" in proc.stderr and "Traceback" not in proc.stderr


def test_new_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    project = tmp_path / "existing"
    project.mkdir()
    (project / "config.yaml").write_text("mine: true\n")
    (project / "notes.txt").write_text("keep me\n")

    proc = run_cli("new", str(project))
    assert proc.returncode == 2
    assert "not empty" in proc.stderr and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert (project / "config.yaml").read_text() == "mine: true\n"
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "notes.txt"]

    run_cli("new", str(project), "--force", check=True)
    assert yaml.safe_load((project / "config.yaml").read_text())["experiment"]["name"] == "existing"
    assert (project / "notes.txt").read_text() == "keep me\n"
    assert (project / "train.py").is_file()


def test_new_into_an_empty_directory_and_bad_arguments(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli("new", str(empty), "--example", "image", check=True)
    assert yaml.safe_load((empty / "config.yaml").read_text())["model"]["name"] == "models.net:SmallCNN"

    bad = run_cli("new", str(tmp_path / "x"), "--example", "audio")
    assert bad.returncode == 2 and "unknown example 'audio'" in bad.stderr and "tabular" in bad.stderr
    assert not (tmp_path / "x").exists()

    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_cli("new", str(afile))
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_generated_dvc_pipeline_is_valid_and_calls_the_cli(tmp_path: Path) -> None:
    project = tmp_path / "piped"
    run_cli("new", str(project), check=True)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "train", "evaluate"]
    assert "python -m taktstock prepare config.yaml" in stages["prepare"]["cmd"]
    assert stages["train"]["cmd"] == "python -m taktstock train config.yaml --run-dir experiments/pipeline/piped"
    assert stages["evaluate"]["cmd"] == "python -m taktstock evaluate experiments/pipeline/piped"
    dvc = Path(sys.executable).parent / "dvc"
    env = cli_env(DVC_NO_ANALYTICS="1")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=project, env=env, check=True, timeout=120)
    # `dvc dag` builds the stage graph: schema errors and overlapping outputs fail here.
    dag = subprocess.run([str(dvc), "dag", "--dot"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert dag.returncode == 0, dag.stderr
    assert '"prepare" -> "train"' in dag.stdout and '"train" -> "evaluate"' in dag.stdout
