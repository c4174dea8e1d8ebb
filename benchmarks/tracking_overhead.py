"""Wall-time overhead of tracking on the default digits experiment (config.yaml).

Compares tracking off (no TensorBoard, no MLflow) with MLflow (embedded SQLite) + TensorBoard on.
Each run is a fresh process in a scratch directory; runs are interleaved (off, on, off, on, ...)
so machine noise hits both sides alike. Reported: median training time (the `Trainer.fit` loop,
i.e. excluding interpreter start, data preparation, model logging and plots), the CPU time of
that loop (all threads, robust on a shared machine) and, for reference, the whole `train()` call.

    PYTHONPATH=. python benchmarks/tracking_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside the child: times Trainer.fit and the whole train() call, prints them as JSON.
CHILD = """
import json, sys, time
from taktstock.config import load_config
from taktstock.training import trainer as trainer_mod
from taktstock.training.run import train

fit_times = []
original_fit = trainer_mod.Trainer.fit

def timed_fit(self):
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        return original_fit(self)
    finally:
        fit_times.append((time.perf_counter() - t0, time.process_time() - c0))

trainer_mod.Trainer.fit = timed_fit
config = load_config(sys.argv[1], sys.argv[2:])
t0 = time.perf_counter()
result = train(config)
total = time.perf_counter() - t0
print("RESULT " + json.dumps({"fit_s": fit_times[0][0], "fit_cpu_s": fit_times[0][1], "train_s": total, "steps": result.steps}))
"""

MODES = {
    "off": ["logging.tensorboard=false", "logging.mlflow.enabled=false"],
    "mlflow+tensorboard": ["logging.tensorboard=true", "logging.mlflow.enabled=true"],
}


def run_once(workdir: Path, config: Path, overrides: list[str], threads: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true", WANDB_MODE="offline")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), *overrides], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per mode (after one warm-up run each).")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--json", type=Path, help="Also write the raw timings here.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS for the runs (0: torch default). 1 avoids OpenMP spin-waiting on a shared, oversubscribed machine.",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="taktstock-bench-"))
    try:
        config = workdir / "config.yaml"
        shutil.copy(args.config, config)
        for overrides in MODES.values():  # warm-up: data cache, MLflow database creation, OS file cache
            run_once(workdir, config, overrides, args.threads)
        timings: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for i in range(args.repeats):
            for mode, overrides in MODES.items():
                timings[mode].append(run_once(workdir, config, overrides, args.threads))
                t = timings[mode][-1]
                print(f"round {i + 1}/{args.repeats} {mode:>20}: fit {t['fit_s']:.2f}s (CPU {t['fit_cpu_s']:.2f}s)", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = {m: {k: statistics.median(t[k] for t in ts) for k in ("fit_s", "fit_cpu_s", "train_s")} for m, ts in timings.items()}
    ratio_fit = med["mlflow+tensorboard"]["fit_s"] / med["off"]["fit_s"]
    ratio_train = med["mlflow+tensorboard"]["train_s"] / med["off"]["train_s"]
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"steps per run: {timings['off'][0]['steps']}; repeats: {args.repeats} (interleaved); OMP_NUM_THREADS={args.threads or 'default'}"
    )
    for mode, m in med.items():
        print(
            f"{mode:>20}: median training (fit) wall {m['fit_s']:.2f}s, CPU {m['fit_cpu_s']:.2f}s; median whole train() {m['train_s']:.2f}s"
        )
    for mode, ts in timings.items():
        print(f"{mode:>20}: fastest training (fit) wall {min(t['fit_s'] for t in ts):.2f}s")
    ratio_cpu = med["mlflow+tensorboard"]["fit_cpu_s"] / med["off"]["fit_cpu_s"]
    print(f"overhead, training wall time: {ratio_fit:.3f}x (CPU time of all threads: {ratio_cpu:.3f}x)")
    print(f"whole train() incl. MLflow start-up and model logging: {ratio_train:.3f}x")
    if args.json:
        args.json.write_text(json.dumps({"timings": timings, "median": med, "ratio_fit": ratio_fit, "ratio_train": ratio_train}, indent=2))


if __name__ == "__main__":
    main()
