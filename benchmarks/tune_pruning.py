"""Benchmark: how much training does median pruning save, and does it keep the best result?

Runs the same trials twice on the digits default experiment (experiments/sweep_digits.yaml): once without a pruner,
once with the median pruner. The random sampler with a fixed seed makes both sweeps evaluate the same parameter
sets, so the difference is only what pruning stops. Reports the epochs trained (validations) and the best value.

Target (issue 5): pruned epochs <= 60% of unpruned, best value within 0.5 percentage points.

    python benchmarks/tune_pruning.py                       # 30 trials, the experiment's 30 epochs
    python benchmarks/tune_pruning.py --trials 30 --epochs 10 --workers 2   # a smaller version

Not a test: it trains a few hundred epochs (minutes of CPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(pruner: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "taktstock", "tune", str(REPO / "experiments" / "sweep_digits.yaml"),
        "tune.sampler=random", f"tune.pruner={pruner}", f"train.epochs={args.epochs}",
        f"tune.startup_trials={args.startup}", f"tune.warmup_epochs={args.warmup}", "logging.tensorboard=false", "logging.plots=false",
        "--trials", str(args.trials), "--workers", str(args.workers), "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    with (out / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    done = [float(r["value"]) for r in rows if r["state"] == "COMPLETE"]
    return {
        "trials": len(rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "epochs": sum(int(r["validations"] or 0) for r in rows),
        "best": max(done),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--startup", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "sweeps" / "bench-pruning")
    args = p.parse_args()
    base = sweep("none", args, args.out / "none")
    pruned = sweep("median", args, args.out / "median")
    result = {
        "settings": vars(args) | {"out": str(args.out)},
        "no_pruning": base,
        "median_pruning": pruned,
        "epoch_ratio": round(pruned["epochs"] / base["epochs"], 3),
        "best_gap_pp": round(100 * (base["best"] - pruned["best"]), 3),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = result["epoch_ratio"] <= 0.6 and abs(result["best_gap_pp"]) <= 0.5
    print("target met" if ok else "target NOT met", "(epochs <= 60%, best within 0.5 pp)")


if __name__ == "__main__":
    main()
