"""Tables: prepare time and peak memory for a large mixed-type Parquet file (issue 15's targets).

    python -m benchmarks.tables [--rows 1000000] [--workdir DIR] [--batches]

Writes a Parquet table of `rows` rows and 30 feature columns (16 float, 8 of them with 5% gaps; 2 integer;
6 text categories of 4-50 levels with 3% gaps; 3 boolean with gaps; 2 timestamps) plus a 3-class target,
then runs `prepare` (read, split, fit on the training rows, encode, normalise, cache) in a fresh process and
reports its wall time and peak RSS against the size of the encoded float32 matrix.
Targets: under 60 s on 2 cores; peak RSS under 4x the encoded matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
from taktstock.config.loader import validate
from taktstock.data.prepare import prepare
t0 = time.perf_counter()  # prepare itself: its imports (pandas, pyarrow, scikit-learn) count, torch's do not
config = validate(json.loads(sys.argv[1]), {}, "benchmark")
data = prepare(config)
seconds = time.perf_counter() - t0
nbytes = sum(data.arrays[s][0].nbytes for s in ("train", "val", "test"))
# VmHWM: this process's own peak (ru_maxrss would also count the parent's peak, kept across fork+exec)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": seconds, "encoded_bytes": nbytes, "columns": data.input_shape[0], "peak_rss": hwm}))
"""


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    """The benchmark table, written column by column with pyarrow (no pandas frame of the whole table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {}
    signal = np.zeros(rows)
    for i in range(16):
        values = rng.standard_normal(rows) * (i + 1) + i
        signal += values / (i + 1) if i < 4 else 0.0
        mask = rng.random(rows) < 0.05 if i < 8 else None
        cols[f"num{i}"] = pa.array(values, mask=mask)
    for i in range(2):
        cols[f"int{i}"] = pa.array(rng.integers(0, 100, rows))
    for i, levels in enumerate((4, 8, 12, 20, 30, 50)):
        names = np.array([f"c{i}_{k}" for k in range(levels)])
        idx = rng.integers(0, levels, rows)
        signal += (idx % 3 == 0) * 0.5 if i == 0 else 0.0
        cols[f"cat{i}"] = pa.array(names[idx], mask=rng.random(rows) < 0.03)
    for i in range(3):
        cols[f"flag{i}"] = pa.array(rng.random(rows) < 0.5, mask=rng.random(rows) < 0.02)
    start = np.datetime64("2020-01-01T00:00:00", "s")
    for i in range(2):
        cols[f"when{i}"] = pa.array(start + rng.integers(0, 4 * 365 * 86400, rows).astype("timedelta64[s]"))
    cols["target"] = pa.array(np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3])).astype(np.int64))
    pq.write_table(pa.table(cols), path)


def run(rows: int, workdir: Path) -> dict[str, float]:
    path = workdir / "table.parquet"
    t0 = time.perf_counter()
    write_table(path, rows)
    write_s = time.perf_counter() - t0
    config = {
        "data": {"source": "parquet", "path": str(path), "target": "target", "cache_dir": str(workdir / "prepared")},
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time of the prepare process (the table was written here)
    peak = result["peak_rss"]
    return {
        "rows": rows,
        "feature_columns": 30,
        "parquet_mb": path.stat().st_size / 2**20,
        "write_s": write_s,
        "prepare_s": result["seconds"],
        "prepare_cpu_s": usage.ru_utime + usage.ru_stime,  # includes the imports; wall time suffers on a shared machine
        "encoded_columns": result["columns"],
        "encoded_mb": result["encoded_bytes"] / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_rss_over_encoded": peak / result["encoded_bytes"],
        "cpu_count": os.cpu_count() or 0,
    }


def batch_throughput(path: Path, workdir: Path, rounds: int = 3) -> dict[str, list[float]]:
    """Training batches per second (as samples/s) of the onehot in-memory matrix and the index dict samples."""
    import torch

    from taktstock.config.loader import validate
    from taktstock.data.loaders import build_train_batches
    from taktstock.data.prepare import prepare

    torch.set_num_threads(1)
    result: dict[str, list[float]] = {}
    for encoding in ("onehot", "index"):
        data = {"source": "parquet", "path": str(path), "target": "target", "cache_dir": str(workdir / "prepared")}
        config = validate({"data": data | {"categorical_encoding": encoding}, "train": {"batch_size": 512}}, {}, "benchmark")
        split = prepare(config).split("train")
        for _ in range(rounds):
            batches = build_train_batches(split, config, torch.device("cpu"))
            t0, n = time.perf_counter(), 0
            for batch in batches.epoch(0):
                n += len(batch["labels"] if isinstance(batch, dict) else batch[1])
            result.setdefault(encoding, []).append(n / (time.perf_counter() - t0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None, help="Where the table and cache go (default: a temporary directory).")
    parser.add_argument("--batches", action="store_true", help="Also time training batches: onehot in-memory matrix vs index dict samples.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = run(args.rows, workdir)
        if args.batches:
            result["batch_samples_per_s"] = batch_throughput(workdir / "table.parquet", workdir)
    for key, value in result.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
