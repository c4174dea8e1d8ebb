"""Start-up: wall time of `taktstock --help` and of `taktstock train` until the first optimizer step."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Options

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")
    return env


def _wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=_env(), check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def _first_step(cmd: list[str], cwd: Path) -> float:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    marks = [line for line in proc.stderr.splitlines() if line.startswith("FIRST_STEP_AT ")]
    if not marks:
        raise RuntimeError(f"no first step in `{' '.join(cmd)}`:\n{proc.stderr[-2000:]}")
    return float(marks[0].split()[1]) - t0


def run_startup(opts: Options) -> list[dict[str, Any]]:
    cwd = opts.workdir / "startup"
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    py = opts.python
    train = [py, "-m", "taktstock", "train", str(REPO / "config.yaml"), "train.callbacks=[benchmarks.timing:FirstStepExit]"]
    train += [f"train.device={opts.device}"]
    _first_step(train, cwd)  # prepares the data cache (a cache hit is the common case) and warms the page cache
    commands = {
        "python -c 'import torch' (floor)": lambda: _wall([py, "-c", "import torch"], cwd),
        "taktstock --help": lambda: _wall([py, "-m", "taktstock", "--help"], cwd),
        "taktstock train (to first step)": lambda: _first_step(train, cwd),
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(2 if opts.quick else 3):  # interleaved
        for k, fn in commands.items():
            times[k].append(fn())
    shutil.rmtree(cwd, ignore_errors=True)
    return [{"command": k, "seconds": statistics.median(v), "all": [round(t, 3) for t in v]} for k, v in times.items()]
