"""`python -m benchmarks [SUITE ...] [--device auto|cpu|cuda] [--threads N] [--repeats N] [--quick] [--json PATH]`.

Suites: mlp, resnet, memory, checkpoint, startup (default: all). Prints tables and writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SUITES = ("mlp", "resnet", "memory", "checkpoint", "startup")  # run in this order
THROUGHPUT = [
    ("contender", "contender", ""),
    ("samples_per_s", "samples/s (median)", ",.0f"),
    ("ratio", "x hand-written DataLoader (median of paired)", ".3f"),
    ("best_samples_per_s", "best samples/s", ",.0f"),
    ("best_ratio", "x (best/best)", ".3f"),
]
# Each suite's console table: (key, header, format spec) per column.
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "mlp": THROUGHPUT,
    "resnet": THROUGHPUT,
    "memory": [
        ("workload", "workload", ""),
        ("contender", "contender", ""),
        ("peak_rss_mb", "peak RSS MB", ".0f"),
        ("rss_ratio", "x hand-written", ".3f"),
        ("cuda_peak_mb", "CUDA peak MB", ".0f"),
        ("cuda_ratio", "x hand-written", ".3f"),
    ],
    "checkpoint": [("metric", "metric", ""), ("value", "value", ".4g")],
    "startup": [("command", "command", ""), ("seconds", "seconds", ".3f")],
}


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="*", default=[], help=f"any of {', '.join(SUITES)} (default: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for every contender (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per comparison (default 5)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    p.add_argument("--json", type=Path, default=None, help="result file (default benchmarks/results/<device>.json)")
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/.work"), help="scratch directory (data cache, runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_memory":  # internal: one contender in a fresh process
        name, contender = argv[1], argv[2]
        args = _parse(argv[3:])
        opts = _options(args)
        from benchmarks.suites import memory_child

        print(json.dumps(memory_child(name, contender, opts)))
        return
    args = _parse(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        sys.exit(f"error: unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    suites = args.suites or list(SUITES)
    opts = _options(args)
    from benchmarks import common

    results: dict[str, Any] = {"environment": common.environment(opts), "options": vars(args) | {"suites": suites}}
    t0 = time.perf_counter()
    for name in SUITES:
        if name in suites:
            results[name], title, rows = _run_suite(name, opts)
            common.print_table(title, rows, COLUMNS[name])
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    path = args.json or Path("benchmarks/results") / f"{opts.device}.json"
    common.write_json(path, results)
    print(f"\nresults: {path} ({results['elapsed_s']} s)")


def _run_suite(name: str, opts: Any) -> tuple[Any, str, list[dict[str, Any]]]:
    """Run one suite: (what the JSON records, the console table's title and rows)."""
    if name in ("mlp", "resnet"):
        from benchmarks.suites import run_throughput

        rows = run_throughput(name, opts)
        return rows, f"{name} ({opts.device}, {opts.threads} thread(s), median of {opts.repeats} interleaved rounds)", rows
    if name == "memory":
        from benchmarks.suites import run_memory

        rows = run_memory(opts)
        return rows, f"peak memory ({opts.device}, fresh process per run, median)", rows
    if name == "checkpoint":
        from benchmarks.checkpoint import run_checkpoint

        row = run_checkpoint(opts)
        return row, f"checkpoint (ResNet-18 + AdamW state, {opts.device})", [{"metric": k, "value": v} for k, v in row.items()]
    from benchmarks.startup import run_startup

    rows = run_startup(opts)
    return rows, "start-up (wall time, median)", rows


def _options(args: argparse.Namespace) -> Any:
    import torch

    from benchmarks.common import Options

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(key, value)
    return Options(
        device=device,
        threads=args.threads,
        repeats=2 if args.quick else args.repeats,
        quick=args.quick,
        workdir=args.workdir,
        python=sys.executable,
    )


if __name__ == "__main__":
    main()
