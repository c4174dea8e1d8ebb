"""Language-model peak RSS on a 1x and a `--copies`x corpus.

    python -m benchmarks.lm_rss [--copies 10] [--repeats 3] [--json FILE] [--quick]

The same `gpt` (benchmarks/lm.py's) trains the same number of steps through `taktstock train` on a corpus of
stdlib modules and on `--copies` copies of it, with `data.num_workers` DataLoader workers. The corpus is
prepared (tokenised into the memory-mapped token file) beforehand in the parent; each measurement is then a
fresh process (`--repeats` per size, sizes alternating; a row is their median) that only opens the cache,
resets its peak (Linux clear_refs) after the imports and the set-up, and trains. It reports its own peak RSS
and the largest worker's (read after every step, while the workers are alive). The token file is
memory-mapped, so 10x the corpus should not raise either peak by more than the pages the windows touch.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Options, environment, print_table, write_json
from benchmarks.images import _hwm_mib
from benchmarks.lm import _config

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
PEAKS: dict[str, float] = {}


class WorkerPeak:
    """train.callbacks entry: the largest DataLoader worker's peak RSS, read after every step while the workers live."""

    def on_step_end(self, trainer: Any) -> None:
        import psutil

        peaks = [_hwm_mib(c.pid) for c in psutil.Process().children(recursive=True)]
        PEAKS["worker_mib"] = max([PEAKS.get("worker_mib", 0.0), *peaks])


def _corpus(workdir: Path, modules: int, copies: int) -> Path:
    """`copies` copies of the first `modules` stdlib modules as .txt documents (distinct names, same text)."""
    folder = workdir / f"x{copies}"
    out = folder / "corpus"
    if not (folder / ".complete").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for src in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:modules]:
            text = src.read_text(encoding="utf-8", errors="replace")
            for k in range(copies):
                (out / f"{src.stem}-{k}.txt").write_text(text)
        (folder / ".complete").write_text("")
    return folder


def _train_config(folder: Path, steps: int) -> Any:
    from taktstock.config.loader import validate

    raw = _config(folder, steps)
    raw["data"]["num_workers"] = WORKERS
    raw["train"]["callbacks"] = ["benchmarks.lm_rss:WorkerPeak"]
    return validate(raw, {}, "<benchmark>")


def _child(folder: Path, steps: int) -> dict[str, Any]:
    import torch

    from taktstock.data.prepare import prepare
    from taktstock.training.run import train as run_train

    torch.set_num_threads(1)
    config = _train_config(folder, steps)
    tokens = prepare(config).split("train").store.num_tokens  # a cache hit: the parent prepared it
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # measure training, not the import peak of torch
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_train(config, run_dir=folder / "run")
    return {"train_tokens": tokens, "main_mib": _hwm_mib(), "worker_mib": PEAKS.get("worker_mib", 0.0)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.lm_rss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--modules", type=int, default=40, help="stdlib modules in the 1x corpus")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per corpus size (the row is their median)")
    p.add_argument("--quick", action="store_true", help="8 modules, 2 copies, 3 steps: a smoke run of the structure")
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/lm_rss"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/lm-rss-cpu.json"))
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        # Through the imported module, not __main__: the WorkerPeak callback taktstock loads writes *its* PEAKS.
        from benchmarks.lm_rss import _child as child

        print(json.dumps(child(a.child, a.steps)))
        return
    if a.quick:
        a.modules, a.copies, a.steps, a.repeats = 8, 2, 3, 1
    from taktstock.data.prepare import prepare

    folders = {}
    for copies in (1, a.copies):
        folders[copies] = _corpus(a.workdir.resolve(), a.modules, copies)
        prepare(_train_config(folders[copies], a.steps))  # tokenised here, outside the measured processes
    runs: dict[int, list[dict[str, Any]]] = {1: [], a.copies: []}
    for _ in range(a.repeats):  # alternating sizes, so a slow drift of the machine touches both alike
        for copies, folder in folders.items():
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.lm_rss", "--child", str(folder), "--steps", str(a.steps)],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            if proc.returncode:
                sys.exit(f"the {copies}x child failed:\n{proc.stderr[-2000:]}")
            runs[copies].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for copies, these in runs.items():
        main_all, worker_all = [r["main_mib"] for r in these], [r["worker_mib"] for r in these]
        rows.append(
            {
                "copies": copies,
                "train_tokens": these[0]["train_tokens"],
                "token_file_mib": these[0]["train_tokens"] * 2 / 2**20,  # uint16 ids: vocabulary 2048
                "main_mib": statistics.median(main_all),
                "worker_mib": statistics.median(worker_all),
                "main_mib_all": [round(v, 1) for v in main_all],
                "worker_mib_all": [round(v, 1) for v in worker_all],
            }
        )
    base = rows[0]
    for r in rows:  # ratios of the medians over the fresh processes
        r["main_ratio"] = r["main_mib"] / base["main_mib"]
        r["worker_ratio"] = r["worker_mib"] / base["worker_mib"] if base["worker_mib"] else None
    result = {
        "benchmark": "lm peak RSS",
        "environment": environment(Options(quick=a.quick)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "steps": a.steps,
        "num_workers": WORKERS,
        "modules": a.modules,
        "repeats": a.repeats,
        "rows": rows,
    }
    cols = [
        ("copies", "corpus", "d"),
        ("train_tokens", "train tokens", "d"),
        ("token_file_mib", "token file MiB", ".2f"),
        ("main_mib", "main MiB (median)", ".0f"),
        ("main_ratio", "main x1", ".3f"),
        ("worker_mib", "worker MiB (median)", ".0f"),
        ("worker_ratio", "worker x1", ".3f"),
    ]
    print_table(f"LM peak RSS, {a.steps} training steps, {WORKERS} workers", rows, cols)
    write_json(a.json, result)
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
