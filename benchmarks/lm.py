"""Language-model tokens/s: `taktstock train` vs a hand-written nanoGPT-style loop, same model and data.

Both train the same `gpt` (built by taktstock's registry, same seed) with AdamW on windows of the same
memory-mapped token file (the prepared corpus of this Python's stdlib modules), batch B x block T, one
process. The hand-written loop is nanoGPT's: random window starts, `torch.from_numpy` of memmap slices,
forward, cross-entropy, backward, step. taktstock is timed from its first to its last optimizer step (the
FitTimer callback), without periodic checkpoints; the loop likewise. Contenders run round-robin and the
result is the median of per-round ratios.

    python -m benchmarks.lm [--repeats 5] [--steps 60] [--out benchmarks/results/lm-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Timed, interleaved
from benchmarks.timing import TimedTrain, timed_sections

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "gpt", "block_size": 64, "dim": 128, "depth": 2, "heads": 4, "dropout": 0.0}
BATCH, LR = 16, 1e-3


def _config(workdir: Path, steps: int) -> dict[str, Any]:
    return {
        "experiment": {"name": "bench-lm"},
        "seed": 0,
        "data": {
            "source": "corpus",
            "path": str(workdir / "corpus"),
            "cache_dir": str(workdir / "prepared"),
            "block_size": MODEL["block_size"],
            "tokenizer": {"train": "bpe", "vocab_size": 2048},
        },
        "model": dict(MODEL),
        "optim": {"name": "adamw", "lr": LR},
        **timed_sections(steps, BATCH),
    }


def _corpus(workdir: Path, modules: int = 40) -> None:
    sys.path.insert(0, str(REPO))
    from tests.text_helpers import python_sources

    python_sources(workdir / "corpus", modules)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/lm"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _corpus(args.workdir)

    from taktstock.data.prepare import prepare
    from taktstock.models.registry import build_model

    taktstock = TimedTrain(_config(args.workdir, args.steps), args.workdir / "run", BATCH * MODEL["block_size"])
    config = taktstock.config
    data = prepare(config)
    tokens = data.split("train").store.tokens  # the memory-mapped token file both contenders read
    T = MODEL["block_size"]
    per_run = args.steps * BATCH * T

    def hand_written() -> tuple[float, int]:
        torch.manual_seed(0)
        model = build_model("gpt", config.model.params(), (T,), data.num_outputs, vocab_size=data.vocab_size)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # taktstock's default kernel, for the same work
        model.train()
        rng = np.random.default_rng(0)
        start = time.perf_counter()  # as FitTimer: from before the first step to the end of the last
        for _ in range(args.steps):
            ix = rng.integers(0, len(tokens) - T - 1, BATCH)
            w = torch.from_numpy(np.stack([tokens[i : i + T + 1] for i in ix]).astype(np.int64))
            x, y = w[:, :-1], w[:, 1:]
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start, per_run

    rows = interleaved(
        [Timed("hand-written nanoGPT loop", hand_written), Timed("taktstock", taktstock)], args.repeats, "hand-written nanoGPT loop"
    )
    result = {
        "benchmark": "lm tokens/s",
        "model": MODEL,
        "batch": BATCH,
        "steps": args.steps,
        "threads": 1,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
