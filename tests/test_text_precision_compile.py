"""Text classification and language modelling train in bf16 (CPU autocast) and under torch.compile
(inductor), with the loss falling; dynamically padded batches compile once per mode, not per length."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import cli_env, run_cli, write_config
from tests.test_text_train import lm_config, text_config
from tests.text_helpers import labelled_sentences, python_sources, write_jsonl


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss_step"] for r in lines if "train/loss_step" in r]


def _text(workdir: Path, **train: Any) -> Path:
    write_jsonl(workdir / "d.jsonl", labelled_sentences(240))
    config = text_config(epochs=2, batch_size=24, log_every_n_steps=3, **train)
    config["data"]["pad_to_multiple_of"] = None  # every batch its own length
    config["model"] |= {"dim": 16, "heads": 2}
    return write_config(workdir / "text.yaml", config)


def _lm(workdir: Path, **train: Any) -> Path:
    python_sources(workdir / "corpus", 6)
    config = lm_config(max_steps=16, val_every_n_steps=8, log_every_n_steps=4, **train)
    config["model"] |= {"dim": 32, "depth": 1}
    return write_config(workdir / "lm.yaml", config)


@pytest.mark.parametrize("kind", ["text", "lm"])
def test_bf16_trains_text_and_language_models_through_the_cli(workdir: Path, kind: str) -> None:
    cfg = (_text if kind == "text" else _lm)(workdir, precision="bf16")
    run_cli("train", str(cfg), "--run-dir", "run", cwd=workdir, env=cli_env(OMP_NUM_THREADS="1"), check=True)
    losses = _losses(workdir / "run")
    assert len(losses) >= 3 and losses[-1] < losses[0]
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(v)) for r in records for k, v in r.items() if k.startswith("val/"))


@pytest.mark.slow  # inductor builds C++ kernels on the CPU
@pytest.mark.parametrize("kind", ["text", "lm"])
def test_compiled_text_and_language_models_train_with_one_graph_per_mode(
    workdir: Path, one_thread: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._dynamo.utils import counters

    from taktstock.training.run import train

    if kind == "text":
        # The graph count is decided by dynamo, before any backend: the eager backend checks it without the
        # minutes inductor spends generating C++ for dynamic shapes. The LM run keeps inductor end to end.
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = (_text if kind == "text" else _lm)(workdir, compile=True, precision="bf16")
    torch._dynamo.reset()
    counters.clear()
    train(cfg, run_dir=workdir / "run")
    losses = _losses(workdir / "run")
    assert len(losses) >= 3 and losses[-1] < losses[0]
    # Text: one graph for training and one for evaluation, whatever the batch lengths (left to automatic
    # dynamic shapes, four). LM windows: the same, plus one for the validation split's shorter last batch.
    assert counters["stats"]["unique_graphs"] == (2 if kind == "text" else 3), dict(counters["stats"])
