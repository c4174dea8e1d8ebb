"""Shared helpers: environment facts, interleaved timing, medians, the console table and JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Options:
    device: str = "cpu"
    threads: int = 1
    repeats: int = 5
    quick: bool = False
    workdir: Path = Path("benchmarks/.work")
    python: str = sys.executable


@dataclass
class Timed:
    """One contender of a timed comparison: `run()` trains and returns (seconds, samples)."""

    name: str
    run: Callable[[], tuple[float, int]]
    samples_per_s: list[float] = field(default_factory=list)


def interleaved(contenders: list[Timed], repeats: int, baseline: str, warmup: bool = True) -> list[dict[str, Any]]:
    """Run every contender `repeats` times, round-robin with a rotating start; paired ratios per round."""
    if warmup:
        for c in contenders:
            c.run()
    rounds: list[dict[str, float]] = []
    for r in range(repeats):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        this: dict[str, float] = {}
        for c in order:
            seconds, samples = c.run()
            this[c.name] = samples / seconds
            c.samples_per_s.append(this[c.name])
        rounds.append(this)
    rows = []
    best_base = max(next(c for c in contenders if c.name == baseline).samples_per_s)
    for c in contenders:
        ratios = [rd[c.name] / rd[baseline] for rd in rounds if baseline in rd]
        rows.append(
            {
                "contender": c.name,
                "samples_per_s": statistics.median(c.samples_per_s),
                "ratio": statistics.median(ratios) if ratios else None,
                # Best-of-rounds: on a shared machine interference only ever slows a run down, so the
                # fastest round is the least disturbed one; shown next to the median, never instead of it.
                "best_samples_per_s": max(c.samples_per_s),
                "best_ratio": max(c.samples_per_s) / best_base,
                "samples_per_s_all": [round(v, 1) for v in c.samples_per_s],
            }
        )
    return rows


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment(opts: Options) -> dict[str, Any]:
    import numpy
    import torch

    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": opts.threads,
        "device": opts.device,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    if opts.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    for name in ("lightning", "accelerate", "torchmetrics"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    try:
        from importlib.metadata import version

        info["taktstock"] = version("taktstock")
    except Exception:
        info["taktstock"] = "source"
    return info


def print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    cells = [[_fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    headers = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    sys.stdout.flush()


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and spec:
        return format(value, spec)
    return str(value)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
