"""Shared fixtures: run the real CLI in a subprocess, write small experiment files."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Third-party telemetry and network calls are off for every test.
os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")


def in_ci() -> bool:
    """CI sets CI (to true): there every optional dependency the suite uses is installed, so nothing may skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the test (or module) here; in CI fail instead: a skip there would hide a broken install."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: this must not be skipped)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str) -> ModuleType:
    """Import an optional package a test needs (one that requirements-dev.txt installs); when it cannot be
    imported, skip - or in CI fail, so a broken install cannot turn a file into skips and still exit 0."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        skip_unless_ci(f"{module} cannot be imported ({exc}); requirements-dev.txt installs it")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a taktstock subprocess: this checkout importable, telemetry off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    check: bool = False,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m taktstock ARGS` as a user would run it; returns the completed process.

    The process is forked from this test worker's pre-imported interpreter (tests/resume_harness.py): a fresh
    `python -m taktstock` spends most of a short command importing torch, torchmetrics and their optional
    dependencies, hundreds of times per suite. `fresh=True` (tests of start-up itself) or
    TAKTSTOCK_TEST_SUBPROCESS=1 (all) starts a real interpreter instead."""
    env = env or cli_env()
    if fresh or os.environ.get("TAKTSTOCK_TEST_SUBPROCESS") == "1":
        proc = subprocess.run([sys.executable, "-m", "taktstock", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    else:
        proc = _forked(list(args), cwd or Path.cwd(), env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"taktstock {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


_CLI_SERVER: Any = None


def _cli_server() -> Any:
    """This worker's fork server for run_cli: its own, so a test's background run on the resume harness's
    shared server (which serves one child at a time) never blocks a run_cli call."""
    global _CLI_SERVER
    from tests.resume_harness import ForkServer

    if _CLI_SERVER is None or not _CLI_SERVER.alive():
        import atexit

        _CLI_SERVER = ForkServer(start_timeout=300)  # a fresh machine imports torch from a cold disk cache
        atexit.register(_CLI_SERVER.close)
    return _CLI_SERVER


def _forked(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cli-") as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        child = _cli_server().start(args, Path(cwd).resolve(), out, env=env, err=err, replace_env=True)
        try:
            rc = child.wait(timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(["taktstock", *args], timeout) from None
        return subprocess.CompletedProcess(["taktstock", *args], rc, out.read_text(errors="replace"), err.read_text(errors="replace"))


def tiny_config(**sections: Any) -> dict[str, Any]:
    """A fast digits experiment (small MLP, 2 epochs); keyword arguments update whole sections."""
    config: dict[str, Any] = {
        "experiment": {"name": "tiny"},
        "seed": 1,
        "data": {"source": "digits"},
        "model": {"name": "mlp", "hidden": [32], "dropout": 0.1},
        "optim": {"name": "adamw", "lr": 0.003},
        "train": {"epochs": 2, "batch_size": 64, "log_every_n_steps": 5},
        "metrics": {"monitor": "val/acc", "mode": "max"},
        "logging": {"tensorboard": False, "plots": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = config[key] | value
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project directory used as the working directory (data cache and runs land here)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_thread() -> Any:
    """One intra-op thread: tiny models run fastest so, and do not stall when the CPU cores are busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _process_state_restored() -> Any:
    """Each test leaves this worker's environment and MLflow's process-wide URIs as it found them.

    mlflow.set_tracking_uri()/set_registry_uri() in one test also write MLFLOW_*_URI into os.environ, which every
    later CLI child and server of this worker would inherit."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
    for module, name in (
        ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
        ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ):
        if hasattr(sys.modules.get(module), name):
            setattr(sys.modules[module], name, None)
