"""Text-classification samples/s: `taktstock train` vs a hand-written loop with `DataCollatorWithPadding`.

Both train the same built-in `transformer` classifier (built by taktstock's registry, same seed) with fused
AdamW on the same tokenised ids: labelled topic sentences of very different lengths (scripts/make_text_data.py)
in a JSONL, a BPE tokenizer trained by taktstock's prepare, batches padded to their longest sample with an
attention mask. The hand-written loop is what a Hugging Face user writes: the ids as a list of feature dicts,
`transformers.DataCollatorWithPadding` over a `PreTrainedTokenizerFast` wrapping the same tokenizer.json, a
fresh random permutation per run, forward, cross-entropy, backward, step. taktstock is timed from its first to
its last optimizer step (the FitTimer callback), the loop likewise; one process, one thread, a warm-up round,
then interleaved rounds and the median of per-round ratios.

    python -m benchmarks.text [--repeats 5] [--steps 60] [--json benchmarks/results/text-cpu.json] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Options, Timed, environment, interleaved, print_table, write_json
from benchmarks.timing import TimedTrain, timed_sections

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "transformer", "dim": 64, "depth": 2, "heads": 4, "dropout": 0.0, "max_length": 64}
BATCH, LR, VOCAB = 32, 1e-3, 1000


def _config(workdir: Path, steps: int) -> dict[str, Any]:
    return {
        "experiment": {"name": "bench-text"},
        "seed": 0,
        "data": {
            "source": "text",
            "path": str(workdir / "sentences.jsonl"),
            "target": "label",
            "cache_dir": str(workdir / "prepared"),
            "max_length": MODEL["max_length"],
            "val_fraction": 0.05,
            "test_fraction": 0.05,
            "tokenizer": {"train": "bpe", "vocab_size": VOCAB},
        },
        "model": dict(MODEL),
        "optim": {"name": "adamw", "lr": LR},
        # One epoch longer than max_steps, so no end-of-epoch validation falls inside the timed window.
        **timed_sections(steps, BATCH),
    }


def _sentences(workdir: Path, steps: int) -> None:
    sys.path.insert(0, str(REPO))
    from tests.text_helpers import labelled_sentences, write_jsonl

    workdir.mkdir(parents=True, exist_ok=True)
    # Enough that `steps` batches fit in the training split's one epoch (90 % of the rows).
    write_jsonl(workdir / "sentences.jsonl", labelled_sentences(max(600, int(steps * BATCH / 0.85))))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.text", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, no warm-up: a smoke run of the structure")
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/text"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/text-cpu.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.steps = 1, 3
    torch.set_num_threads(1)
    _sentences(a.workdir, a.steps)

    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    from taktstock.data.dataset import input_shape
    from taktstock.data.prepare import prepare
    from taktstock.models.registry import build_model

    taktstock = TimedTrain(_config(a.workdir, a.steps), a.workdir / "run", BATCH)
    config = taktstock.config
    data = prepare(config)
    split = data.split("train")
    # The same ids taktstock trains on, as the list of feature dicts a `datasets.map(tokenize)` would give.
    features = [{"input_ids": split.store[i].tolist(), "labels": int(split.labels[i])} for i in range(len(split))]
    pad_id = int(split.pad_id)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(data.tokenizer_path))
    hf_tok.pad_token = hf_tok.convert_ids_to_tokens(pad_id)
    assert hf_tok.pad_token_id == pad_id
    collate = DataCollatorWithPadding(hf_tok, return_tensors="pt")
    per_run = a.steps * BATCH

    def hand_written() -> tuple[float, int]:
        torch.manual_seed(0)
        model = build_model("transformer", config.model.params(), input_shape(data.spec()), data.num_outputs, vocab_size=data.vocab_size)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # taktstock's default kernel, for the same work
        model.train()
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0)).tolist()
        start = time.perf_counter()  # as FitTimer: from before the first step to the end of the last
        for step in range(a.steps):
            batch = collate([features[i] for i in order[step * BATCH : (step + 1) * BATCH]])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start, per_run

    baseline = "hand-written, DataCollatorWithPadding"
    rows = interleaved([Timed(baseline, hand_written), Timed("taktstock train", taktstock)], a.repeats, baseline, warmup=not a.quick)
    result = {
        "benchmark": "text classification samples/s",
        "environment": environment(Options(repeats=a.repeats, quick=a.quick)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "model": MODEL,
        "vocab_size": data.vocab_size,
        "train_samples": len(split),
        "mean_tokens_per_sample": round(split.store.num_tokens / len(split), 1),
        "batch": BATCH,
        "steps": a.steps,
        "repeats": a.repeats,
        "threads": 1,
        "rows": rows,
    }
    cols = [("contender", "contender", ""), ("samples_per_s", "samples/s", ".0f"), ("ratio", "ratio (median of paired)", ".3f")]
    print_table(f"text classification, {a.steps} steps of {BATCH}, {len(split)} training sentences", rows, cols)
    write_json(a.json, result)
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
