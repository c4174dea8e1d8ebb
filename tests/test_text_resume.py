"""Text runs keep taktstock's guarantees: SIGKILL mid-epoch then --resume is bit-identical (text classification
and language modelling), and a 2-process language model matches the 1-process one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from tests import rank_keys
from tests.conftest import cli_env, run_cli, write_config
from tests.resume_harness import count_lines, kill_and_resume, reference_server, shared_server
from tests.test_text_train import lm_config, text_config
from tests.text_helpers import labelled_sentences, python_sources, write_jsonl

# Checkpoints every few steps, a log line every step: kills land between, and inside, checkpoint intervals.
RESUME = {"log_every_n_steps": 1}
CHECKPOINT = {"every_n_steps": 3}


def _records_without_timing(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without train/tokens_per_s, the one timing in it (everything else must match bit for bit)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("train/tokens_per_s", None)
        out.append(record)
    return out


def _kill_and_compare(root: Path, config: dict[str, Any], kills: int, seed: int) -> tuple[Path, Path]:
    server = shared_server()
    cfg = write_config(root / "config.yaml", config)
    ref = root / "reference"
    # The reference in a fresh interpreter; the killed and resumed runs fork from the pre-imported server.
    assert reference_server().run(["train", str(cfg), "--run-dir", str(ref)], root, root / "reference.log", timeout=300) == 0, (
        root / "reference.log"
    ).read_text()
    run = root / "killed"
    stats = kill_and_resume(
        server, root, cfg, run, kills=kills, rng=random.Random(seed), total_lines=count_lines(ref / "metrics.jsonl"), timeout=300
    )
    assert stats.kills == kills and stats.resumes >= kills, stats.points
    assert any(stats.resumed_from), stats.resumed_from  # (each resume's step is checked by the harness)
    for name in ("model.safetensors", "best.safetensors"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    return run, ref


def test_sigkill_mid_epoch_then_resume_is_bit_identical_for_text_classification(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", labelled_sentences(300))
    config = text_config(**RESUME) | {"checkpoint": CHECKPOINT}
    run, ref = _kill_and_compare(tmp_path, config, kills=3, seed=21)
    assert (run / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()


def test_sigkill_mid_epoch_then_resume_is_bit_identical_for_language_modelling(tmp_path: Path) -> None:
    python_sources(tmp_path / "corpus", 12)
    config = lm_config(**RESUME, max_steps=30, val_every_n_steps=10) | {"checkpoint": CHECKPOINT}
    run, ref = _kill_and_compare(tmp_path, config, kills=3, seed=22)
    assert _records_without_timing(run) == _records_without_timing(ref)
    assert [r["step"] for r in _records_without_timing(run) if "val/perplexity" in r] == [10, 20, 30]


def test_two_process_language_model_matches_one_process(tmp_path: Path) -> None:
    """Same global batch, seed and dropout 0: 2 ranks (gloo) give the 1-process weights up to reduction order,
    and validation over both ranks' shards gives the same per-token loss and perplexity. The two ranks really ran
    (world size 2 in the checkpoint) and split the data: disjoint windows that together are the 1-process run's."""
    python_sources(tmp_path / "corpus", 12)
    rank_keys.install(tmp_path / "helpers", "taktstock.data.text.lm:LanguageModelingSplit")
    config = lm_config(max_steps=12, val_every_n_steps=6, log_every_n_steps=6, callbacks=[rank_keys.CALLBACK])
    cfg = write_config(tmp_path / "lm.yaml", config)
    for name, extra in (("single", []), ("double", ["--nproc-per-node", "2"])):
        (tmp_path / f"keys_{name}").mkdir()
        env = cli_env(OMP_NUM_THREADS="1", DUMP_DIR=str(tmp_path / f"keys_{name}"))
        env["PYTHONPATH"] += os.pathsep + str(tmp_path / "helpers")
        run_cli("train", str(cfg), "--run-dir", str(tmp_path / name), *extra, cwd=tmp_path, env=env, timeout=400, check=True)
    single, double = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("single", "double"))
    assert single.keys() == double.keys()
    assert max(float((single[k] - double[k]).abs().max()) for k in single) <= 1e-5
    val = {n: [r for r in _records_without_timing(tmp_path / n) if "val/loss" in r] for n in ("single", "double")}
    assert [r["step"] for r in val["single"]] == [r["step"] for r in val["double"]] == [6, 12]
    for a, b in zip(val["single"], val["double"], strict=True):
        for key in ("val/loss", "val/perplexity"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
    assert [rank_keys.checkpoint_world_size(tmp_path / n) for n in ("single", "double")] == [1, 2]
    (one,) = rank_keys.rank_keys(tmp_path / "keys_single").values()
    assert len(one) == 12 * 16  # 12 steps of 16 windows
    rank_keys.assert_ranks_split(tmp_path / "keys_double", 2, one)
