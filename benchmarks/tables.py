"""Tables: prepare time and peak memory for a large mixed-type Parquet file (issue 15's targets), and training throughput.

    python -m benchmarks.tables [--rows 1000000] [--workdir DIR] [--batches]
    python -m benchmarks.tables --train [--rows 1000000] [--steps 300] [--repeats 5] [--threads 1] [--json PATH]

Writes a Parquet table of `rows` rows and 30 feature columns (16 float, 8 of them with 5% gaps; 2 integer;
6 text categories of 4-50 levels with 3% gaps; 3 boolean with gaps; 2 timestamps) plus a 3-class target,
then runs `prepare` (read, split, fit on the training rows, encode, normalise, cache) in a fresh process and
reports its wall time and peak RSS against the size of the encoded float32 matrix.
Targets: under 60 s on 2 cores; peak RSS under 4x the encoded matrix.

`--train` times training instead, in one process, for each encoding: `taktstock train` (onehot: `mlp` on the
in-memory float matrix; index: `tabular` on the memory-mapped dict samples) against a hand-written PyTorch loop on
the same encoded tensors (the prepared training split, loaded into memory), the same model built by taktstock's
registry, fused AdamW (taktstock's default kernel) and batch size. Each contender trains `steps` optimizer steps per
round, timed from the first to the last step (taktstock: the FitTimer callback, no periodic checkpoints); rounds are
interleaved, and the result is the median samples/s and the median of the per-round ratios to the hand-written loop.
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


BATCH = 512
HIDDEN = [256, 256]
HAND_WRITTEN = "hand-written loop"


def train_config(path: Path, workdir: Path, encoding: str, steps: int) -> dict[str, Any]:
    """The taktstock experiment of `--train`: every row trains (no validation: the hand-written loop does not
    validate), `steps` optimizer steps, no periodic checkpoints."""
    from benchmarks.timing import timed_sections

    return {
        "experiment": {"name": f"bench-tables-{encoding}", "output_dir": str(workdir / "runs")},
        "seed": 0,
        "data": {
            "source": "parquet",
            "path": str(path),
            "target": "target",
            "categorical_encoding": encoding,
            "val_fraction": 0.0,
            "test_fraction": 0.0,
            "cache_dir": str(workdir / "prepared"),
        },
        "model": {"name": "mlp" if encoding == "onehot" else "tabular", "hidden": HIDDEN},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        **timed_sections(steps, BATCH, log_every_n_steps=50),
    }


class HandWrittenTable:
    """The loop a PyTorch user writes on the encoded tensors: a random permutation, batches by indexing,
    the model's forward on (x) or (numeric, categorical), cross-entropy, backward, fused AdamW step."""

    def __init__(self, raw: dict[str, Any]) -> None:
        import torch

        from taktstock.config.loader import validate
        from taktstock.data.prepare import prepare

        self.config = validate(raw, {}, "benchmark")
        data = prepare(self.config)  # a cache hit: the arrays taktstock trains on
        split = data.split("train")
        if self.config.data.categorical_encoding == "index":
            arrays = {k: np.array(v) for k, v in split.arrays().items()}  # into memory: the loop's own copy
            self.inputs = (torch.from_numpy(arrays["numeric"]), torch.from_numpy(arrays["categorical"]))
            self.y = torch.from_numpy(arrays["labels"])
        else:
            self.inputs, self.y = (torch.from_numpy(split.x),), torch.from_numpy(split.y)
        self.prep = data.preprocessing()

    def __call__(self) -> tuple[float, int]:
        import torch
        import torch.nn.functional as F

        from taktstock.models.registry import build_model

        torch.manual_seed(0)
        m, prep = self.config.model, self.prep
        model = build_model(m.name, m.params(), tuple(prep["input_shape"]), prep["num_outputs"], cardinalities=prep.get("cardinalities"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
        steps, n = self.config.train.max_steps, len(self.y)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        model.train()
        t0 = time.perf_counter()
        for step in range(steps):
            idx = perm[step * BATCH : (step + 1) * BATCH]
            loss = F.cross_entropy(model(*(t[idx] for t in self.inputs)), self.y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, steps * BATCH


def train_throughput(rows: int, workdir: Path, steps: int, repeats: int, warmup: bool = True) -> dict[str, Any]:
    """Per encoding: taktstock vs the hand-written loop, interleaved rounds (benchmarks.common.interleaved)."""
    from benchmarks.common import Timed, interleaved
    from benchmarks.timing import TimedTrain

    if steps > rows // BATCH:  # within one epoch: full batches only, the same samples for both contenders
        raise SystemExit(f"error: --steps {steps} needs at least {steps * BATCH:,} rows (--rows {rows:,})")
    path = workdir / f"table-{rows}.parquet"  # kept for reruns with the same --workdir (and so is the prepared cache)
    if not path.is_file():
        write_table(path, rows)
    result: dict[str, Any] = {"rows": rows, "batch_size": BATCH, "steps": steps, "repeats": repeats, "hidden": HIDDEN}
    for encoding in ("onehot", "index"):
        raw = train_config(path, workdir, encoding, steps)
        hand = HandWrittenTable(raw)  # prepares (or reopens) the cache first, outside every timing
        contenders = [Timed(HAND_WRITTEN, hand), Timed("taktstock train", TimedTrain(raw, workdir / "runs" / encoding, BATCH))]
        result[encoding] = interleaved(contenders, repeats, HAND_WRITTEN, warmup=warmup)
        result[f"{encoding}_input_columns"] = [int(t.shape[1]) for t in hand.inputs]  # float columns (, level indices)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="Table rows (default 1,000,000; --quick: 2,000).")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the table and cache go (default: a temporary directory).")
    parser.add_argument("--batches", action="store_true", help="Also time training batches: onehot in-memory matrix vs index dict samples.")
    parser.add_argument("--train", action="store_true", help="Time training (taktstock vs a hand-written loop) instead of prepare.")
    parser.add_argument("--steps", type=int, default=300, help="--train: optimizer steps per contender and round (batch 512).")
    parser.add_argument("--repeats", type=int, default=5, help="--train: interleaved rounds (after one warm-up round).")
    parser.add_argument("--threads", type=int, default=1, help="--train: torch intra-op threads, the same for both contenders.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the result to this JSON file.")
    parser.add_argument("--quick", action="store_true", help="--train smoke run: 2,000 rows, 3 steps, 1 round, no warm-up.")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 3, 1
    rows = args.rows or (2_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.train:
            import torch

            torch.set_num_threads(args.threads)
            result: dict[str, Any] = train_throughput(rows, workdir, args.steps, args.repeats, warmup=not args.quick)
            result["threads"] = args.threads
            _print_train(result)
        else:
            result = run(rows, workdir)
            if args.batches:
                result["batch_samples_per_s"] = batch_throughput(workdir / "table.parquet", workdir)
            for key, value in result.items():
                print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.json is not None:
        from benchmarks.common import write_json

        write_json(args.json, result)
    print(json.dumps(result))


def _print_train(result: dict[str, Any]) -> None:
    from benchmarks.common import print_table

    for encoding in ("onehot", "index"):
        print_table(
            f"{encoding} ({result['rows']:,} rows, batch {BATCH}, {result['steps']} steps, median of {result['repeats']} rounds)",
            result[encoding],
            [
                ("contender", "contender", ""),
                ("samples_per_s", "samples/s (median)", ",.0f"),
                ("ratio", "x hand-written (median of paired)", ".3f"),
                ("best_samples_per_s", "best samples/s", ",.0f"),
            ],
        )


if __name__ == "__main__":
    main()
