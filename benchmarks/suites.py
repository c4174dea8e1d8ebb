"""The timed comparisons (mlp, resnet) and peak memory (each contender in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Options, Timed, interleaved
from benchmarks.workloads import AccelerateRun, HandWritten, LightningRun, Workload, taktstock_run

BASELINE = "hand-written DataLoader"


def mlp_workload(opts: Options) -> Workload:
    """MLP 64-256-256-10 on 64-feature data, batch 64."""
    n = 2048 if opts.quick else 8192
    return Workload(
        name="mlp",
        model={"name": "mlp", "hidden": [256, 256]},
        data_kwargs={"n_samples": n, "n_features": 64, "n_classes": 10},
        batch_size=64,
        epochs=2,
        device=opts.device,
        workdir=opts.workdir,
    )


def resnet_workload(opts: Options) -> Workload:
    """ResNet-18 (CIFAR variant) on 3x32x32 data. GPU: full width, batch 512, bf16, channels_last.
    CPU: the same architecture at width 8, batch 64, so that it finishes in seconds on two cores."""
    cuda = opts.device == "cuda"
    return Workload(
        name="resnet",
        model={"name": "resnet", "blocks": [2, 2, 2, 2], "width": 64 if cuda else 8},
        data_kwargs={
            "n_samples": (10240 if cuda else (256 if opts.quick else 512)),
            "n_features": 3072,
            "n_classes": 10,
            "shape": [3, 32, 32],
        },
        batch_size=512 if cuda else 64,
        epochs=2,
        device=opts.device,
        workdir=opts.workdir,
        precision="bf16" if cuda else "32",
        channels_last=cuda,
        num_workers=4 if cuda else 0,
        # cuDNN autotuning (cudnn.benchmark) is on for every contender: taktstock enables it with deterministic=false.
        deterministic=not cuda,
    )


def contenders(name: str, w: Workload, only: str | None = None) -> dict[str, Callable[[], tuple[float, int]]]:
    """Every contender of a workload by name (built lazily: `only` builds just one, for a fresh-process run).
    Lightning/Accelerate only for mlp and only when installed."""
    # taktstock uses the fused optimizer kernel by default; PyTorch (and so the baseline) does so only on CUDA.
    # On CPU the extra rows separate the two effects: the framework's own cost at the same kernel
    # (optim.fused=false), and the hand-written loops with the kernel taktstock picks.
    cpu = w.device == "cpu"
    factories: dict[str, Callable[[], Callable[[], tuple[float, int]]] | None] = {
        BASELINE: lambda: HandWritten(w, in_memory=False),
        "hand-written DataLoader, fused AdamW": (lambda: HandWritten(w, in_memory=False, fused=True)) if cpu else None,
        "hand-written in-memory": lambda: HandWritten(w, in_memory=True),
        "hand-written in-memory, fused AdamW": (lambda: HandWritten(w, in_memory=True, fused=True)) if cpu else None,
        "taktstock DataLoader": lambda: lambda: taktstock_run(w, "never", "dl"),
        "taktstock DataLoader, optim.fused=false": (lambda: lambda: taktstock_run(w, "never", "dl-unfused", fused=False)) if cpu else None,
        "taktstock in-memory": lambda: lambda: taktstock_run(w, "always", "mem"),
        "taktstock in-memory, optim.fused=false": (lambda: lambda: taktstock_run(w, "always", "mem-unfused", fused=False)) if cpu else None,
        "taktstock DataLoader, default checkpointing": lambda: lambda: taktstock_run(w, "never", "dl-ckpt", defaults=True),
    }
    factories = {k: v for k, v in factories.items() if v is not None}
    if name == "mlp":
        factories["lightning"] = lambda: LightningRun(w)
        factories["accelerate"] = lambda: AccelerateRun(w)
    table = {}
    for label, make in factories.items():
        if only is not None and label != only:
            continue
        try:
            table[label] = make()
        except ImportError:
            print(f"({label} not installed: skipped; see requirements-bench.txt)", file=sys.stderr)
    return table


def workload(name: str, opts: Options) -> Workload:
    return {"mlp": mlp_workload, "resnet": resnet_workload}[name](opts)


def run_throughput(name: str, opts: Options) -> list[dict[str, Any]]:
    w = workload(name, opts)
    w.arrays()  # prepare (and cache) the data once, outside every timing
    table = contenders(name, w)
    rows = interleaved([Timed(k, v) for k, v in table.items()], opts.repeats, BASELINE)
    for r in rows:
        r.update(workload=name, device=opts.device, batch_size=w.batch_size, samples=w.data_kwargs["n_samples"] * w.epochs)
    return rows


# -- peak memory ---------------------------------------------------------------------------------
def memory_child(name: str, contender: str, opts: Options) -> dict[str, Any]:
    """Runs in a fresh process: train once, report this process's peak RSS (and CUDA peak)."""
    import resource

    import torch

    w = workload(name, opts)
    fn = contenders(name, w, only=contender)[contender]
    if opts.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn()
    out: dict[str, Any] = {"max_rss_mb": _peak_rss_mb(resource)}
    if opts.device == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _peak_rss_mb(resource: Any) -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child
    of a big benchmark process would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # other platforms (macOS reports bytes)


def run_memory(opts: Options, names: tuple[str, ...] = ("mlp", "resnet")) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        w = workload(name, opts)
        w.arrays()
        labels = [BASELINE, "hand-written in-memory", "taktstock DataLoader", "taktstock in-memory"]
        samples: dict[str, list[dict[str, Any]]] = {c: [] for c in labels}
        for _ in range(1 if opts.quick else 2):  # interleaved, fresh process each time
            for c in labels:
                samples[c].append(_spawn_memory_child(name, c, opts))
        base = _median_of(samples[BASELINE], "max_rss_mb")
        base_cuda = _median_of(samples[BASELINE], "cuda_max_allocated_mb")
        for c in labels:
            rss, cuda = _median_of(samples[c], "max_rss_mb"), _median_of(samples[c], "cuda_max_allocated_mb")
            rows.append(
                {
                    "workload": name,
                    "contender": c,
                    "peak_rss_mb": rss,
                    "rss_ratio": rss / base,
                    "cuda_peak_mb": cuda,
                    "cuda_ratio": (cuda / base_cuda) if (cuda and base_cuda) else None,
                }
            )
    return rows


def _spawn_memory_child(name: str, contender: str, opts: Options) -> dict[str, Any]:
    cmd = [opts.python, "-m", "benchmarks", "_memory", name, contender, "--device", opts.device, "--threads", str(opts.threads)]
    cmd += ["--workdir", str(opts.workdir)] + (["--quick"] if opts.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {name}/{contender} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_of(items: list[dict[str, Any]], key: str) -> float | None:
    import statistics

    values = [i[key] for i in items if i.get(key) is not None]
    return statistics.median(values) if values else None
