"""A user's own Dataset class through `taktstock train`, against the same work written by hand (issue 26).

    python -m benchmarks.user_dataset [--epochs 150] [--repeats 3] [--workers 0|2] [--quick] [--json PATH]

The workload is what a user writes (`benchmarks/userdata/signals.py`, no taktstock imports): 4,000 1-D
signals of length 40 in a `Dataset` class, a 3-layer `Conv1d` net of 25 channels, Adam (lr 3e-3), batch 100,
many short epochs with a validation pass each (3,200 training and 400 validation items). Every contender is a
whole process, timed from start to exit (imports, data, training, validation, saving the weights):

* `hand-written DataLoader`: a plain script, `DataLoader(Subset(dataset), batch_size=100, shuffle=True)` with the
  default collate (with `--workers 2`: `num_workers=2, persistent_workers=True`).
* `hand-written tensors`: the same loop indexing the dataset's in-memory tensors (`x[perm[i:i+100]]`).
* `taktstock (Dataset)`: `taktstock train` with `data.source: benchmarks.userdata.signals:SignalDataset`, as users
  write it (per-item `__getitem__`); logging to files only (no TensorBoard, no plots, no progress bar), default
  checkpointing (final weights, best model, run.json, metrics.jsonl).
* `taktstock (__getitems__)`, `taktstock (arrays())`: the same dataset with a batched `__getitems__`, or declaring
  its rows with `arrays()` (0 workers only).

With `--workers 2` the dataset applies a random shift and noise in `__getitem__` (NumPy's global generator).
Rounds alternate the order of the contenders; the result is each contender's median wall time and the median of
its per-round ratios to each hand-written loop. Results go to `benchmarks/results/user-dataset-<workers>w-cpu.json`
and `docs/benchmarks.md` ("Your own Dataset").
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
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

HAND_WRITTEN = r"""
import json, sys, time
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from benchmarks.userdata.signals import SignalDataset, SignalNet

mode, epochs, workers, augment, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
torch.manual_seed(0)
dataset = SignalDataset(n=4000, augment=augment)
perm = np.random.default_rng(0).permutation(len(dataset))
train_idx, val_idx = perm[:3200], perm[3200:3600]
model = SignalNet()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
loss_fn = nn.CrossEntropyLoss()
steps, correct = 0, 0
if mode == "dataloader":
    keep = dict(num_workers=workers, persistent_workers=workers > 0)
    train_loader = DataLoader(Subset(dataset, train_idx), batch_size=100, shuffle=True, **keep)
    val_loader = DataLoader(Subset(dataset, val_idx), batch_size=100, **keep)
else:
    x, y = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)
    tx, ty, vx, vy = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    val_loader = [(vx[i : i + 100], vy[i : i + 100]) for i in range(0, len(vy), 100)]
for epoch in range(epochs):
    model.train()
    if mode == "dataloader":
        batches = train_loader
    else:
        order = torch.randperm(len(ty))
        batches = ((tx[order[i : i + 100]], ty[order[i : i + 100]]) for i in range(0, len(ty), 100))
    for xb, yb in batches:
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in val_loader:
            correct += int((model(xb).argmax(1) == yb).sum())
torch.save(model.state_dict(), out)
print(json.dumps({"steps": steps, "val_acc": correct / len(val_idx)}))
"""


def taktstock_config(workdir: Path, source: str, epochs: int, workers: int, augment: bool) -> dict[str, Any]:
    return {
        "experiment": {"name": "user-dataset", "output_dir": str(workdir / "runs")},
        "seed": 0,
        "data": {
            "source": f"benchmarks.userdata.signals:{source}",
            "kwargs": {"n": 4000, "augment": augment},
            "val_fraction": 0.1,
            "test_fraction": 0.1,
            "normalize": "none",
            "num_workers": workers,
            "persistent_workers": True,
            "cache_dir": str(workdir / "cache"),
        },
        "model": {"name": "benchmarks.userdata.signals:SignalNet"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": epochs, "batch_size": 100},
        "metrics": {"monitor": "val/acc", "mode": "max"},
        "logging": {"tensorboard": False, "plots": False, "progress": "off"},
    }


def contenders(workdir: Path, epochs: int, workers: int) -> dict[str, list[str]]:
    augment = workers > 0
    script = workdir / "hand_written.py"
    script.write_text(HAND_WRITTEN)
    py = sys.executable
    out: dict[str, list[str]] = {
        "hand-written DataLoader": [py, str(script), "dataloader", str(epochs), str(workers), str(int(augment)), str(workdir / "hw.pt")],
    }
    if workers == 0:
        out["hand-written tensors"] = [py, str(script), "tensors", str(epochs), "0", "0", str(workdir / "ht.pt")]
    sources = {"taktstock (Dataset)": "SignalDataset"}
    if workers == 0:
        sources |= {"taktstock (__getitems__)": "BatchedSignalDataset", "taktstock (arrays())": "RowsSignalDataset"}
    for name, source in sources.items():
        cfg = workdir / f"{source}.yaml"
        cfg.write_text(yaml.safe_dump(taktstock_config(workdir, source, epochs, workers, augment), sort_keys=False))
        out[name] = [py, "-m", "taktstock", "train", str(cfg), "--run-dir", str(workdir / "run")]
    return out


def run_once(cmd: list[str], workdir: Path) -> tuple[float, str]:
    shutil.rmtree(workdir / "run", ignore_errors=True)  # the benchmark's own scratch run, a fresh run each time
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def measure(workdir: Path, epochs: int, workers: int, repeats: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    cmds = contenders(workdir, epochs, workers)
    names = list(cmds)
    for name in names:  # warm-up: the disk cache, taktstock's split memo
        run_once(cmds[name], workdir)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]  # each round starts with another contender
            seconds, _ = run_once(cmds[name], workdir)
            times[name].append(seconds)
            print(f"round {r + 1}: {name}: {seconds:.1f} s", flush=True)
    baselines = [n for n in names if n.startswith("hand-written")]
    rows = []
    for name in names:
        row: dict[str, Any] = {"contender": name, "seconds": statistics.median(times[name]), "seconds_all": times[name]}
        for base in baselines:
            row[f"x {base}"] = statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))
        rows.append(row)
    return {"rows": rows, "epochs": epochs, "workers": workers, "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.user_dataset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, choices=(0, 2))
    p.add_argument("--quick", action="store_true", help="2 epochs, 1 round: a smoke run")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks/.work/user-dataset")
    args = p.parse_args(argv)
    epochs, repeats = (2, 1) if args.quick else (args.epochs, args.repeats)
    result = measure(args.workdir, epochs, args.workers, repeats)
    import torch

    result["environment"] = {
        "date": date.today().isoformat(),
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"\n{epochs} epochs, {args.workers} workers, {repeats} rounds (whole process wall time)")
    for row in result["rows"]:
        ratios = ", ".join(f"{v:.3f} {k}" for k, v in row.items() if k.startswith("x "))
        print(f"  {row['contender']:<26} {row['seconds']:7.1f} s   {ratios}")
    path = args.json or REPO / f"benchmarks/results/user-dataset-{args.workers}w-cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
