"""The generated DVC pipeline: real `dvc repro`, caching, parameter-driven re-runs and `dvc exp`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli_env, run_cli, tiny_config, write_config

DVC = Path(sys.executable).with_name("dvc")


def _env(project: Path) -> dict[str, str]:
    env = cli_env(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com")
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    # Stages run `python -m taktstock`: the venv's interpreter first on PATH, the project's copy of the package importable.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(project)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}"
    return out


def _ran(output: str) -> set[str]:
    return {stage for stage in ("prepare", "train", "evaluate", "promote") if f"Running stage '{stage}'" in output}


def test_root_dvc_yaml_is_what_the_generator_writes_for_config_yaml() -> None:
    proc = run_cli("pipeline", "dvc", "config.yaml", "--out", "-", cwd=REPO, check=True)
    assert proc.stdout == (REPO / "dvc.yaml").read_text(), "dvc.yaml is stale: run `taktstock pipeline dvc config.yaml`"


def test_dvc_repro_caches_stages_and_reruns_only_what_a_parameter_change_affects(tmp_path: Path) -> None:
    if not DVC.exists():
        pytest.fail(f"dvc not found next to {sys.executable}")
    project = tmp_path / "project"
    shutil.copytree(REPO / "taktstock", project / "taktstock", ignore=shutil.ignore_patterns("__pycache__"))
    config = tiny_config(logging={"tensorboard": False, "plots": True})
    write_config(project / "tiny.yaml", config)
    env = _env(project)
    _run(["git", "init", "-q"], project, env)
    # dvc exp commits through its own git backend, which reads the repository's config rather than the environment.
    _run(["git", "config", "user.name", "taktstock test"], project, env)
    _run(["git", "config", "user.email", "test@example.com"], project, env)
    _run([str(DVC), "init", "-q"], project, env)
    _run([str(DVC), "config", "core.analytics", "false"], project, env)
    _run([str(DVC), "config", "core.check_update", "false"], project, env)
    _run([sys.executable, "-m", "taktstock", "pipeline", "dvc", "tiny.yaml"], project, env)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "train", "evaluate", "promote"]

    first = _run([str(DVC), "repro"], project, env)
    assert _ran(first) == {"prepare", "train", "evaluate", "promote"}, first
    run = project / "experiments/pipeline/tiny/run"
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["split"] == "test" and 0.0 <= metrics["metrics"]["test/acc"] <= 1.0
    assert json.loads((run / "promotion.json").read_text())["promoted"] is True
    assert (run / "plots/learning_curves.png").is_file()
    weights = (run / "best.safetensors").read_bytes()

    second = _run([str(DVC), "repro"], project, env)
    assert _ran(second) == set(), second

    config["optim"]["lr"] = 0.01
    write_config(project / "tiny.yaml", config)
    third = _run([str(DVC), "repro"], project, env)
    assert _ran(third) == {"train", "evaluate", "promote"}, third
    assert (run / "best.safetensors").read_bytes() != weights
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.01

    _run(["git", "add", "-A"], project, env)
    _run(["git", "commit", "-q", "-m", "pipeline"], project, env)
    # Experiments up to evaluate (the metric); promote was exercised above.
    exp = _run([str(DVC), "exp", "run", "-S", "tiny.yaml:optim.lr=0.005", "evaluate"], project, env)
    assert _ran(exp) == {"train", "evaluate"}, exp
    assert yaml.safe_load((project / "tiny.yaml").read_text())["optim"]["lr"] == 0.005
    show = json.loads(_run([str(DVC), "exp", "show", "--json"], project, env))
    text = json.dumps(show)
    assert "test/acc" in text and "0.005" in text, text[:2000]


def test_dvc_generator_refuses_a_config_outside_the_project(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    write_config(tmp_path / "c.yaml", tiny_config())
    proc = run_cli("pipeline", "dvc", "../c.yaml", cwd=tmp_path / "project")
    assert proc.returncode == 2 and "outside" in proc.stderr and "Traceback" not in proc.stderr
