"""The benchmark suite runs (`python -m benchmarks`): a smoke run of the mlp comparison, checked for
its structure only. Speed targets live in the suite's results (docs/benchmarks.md), never in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env


def _quick(tmp_path: Path, module: str, *args: str, env: dict[str, str] | None = None) -> tuple[dict, str]:
    """`python -m MODULE ARGS --json FILE` in tmp_path; returns (the JSON result, stdout)."""
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        cwd=tmp_path,
        env=env or cli_env(OMP_NUM_THREADS="1"),  # this checkout importable: `benchmarks` is a top-level package
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_mlp_benchmark_writes_every_contender_with_paired_ratios(tmp_path: Path) -> None:
    result, stdout = _quick(tmp_path, "benchmarks", "mlp", "--quick", env=cli_env())
    assert result["environment"]["device"] == "cpu" and result["environment"]["torch"]
    rows = {r["contender"]: r for r in result["mlp"]}
    expected = {
        "hand-written DataLoader",
        "hand-written DataLoader, fused AdamW",
        "hand-written in-memory",
        "hand-written in-memory, fused AdamW",
        "taktstock DataLoader",
        "taktstock DataLoader, optim.fused=false",
        "taktstock in-memory",
        "taktstock in-memory, optim.fused=false",
        "taktstock DataLoader, default checkpointing",
    }
    assert expected <= set(rows), sorted(rows)
    assert rows["hand-written DataLoader"]["ratio"] == 1.0  # the baseline of the paired ratios
    for r in rows.values():
        assert len(r["samples_per_s_all"]) == 2 and all(v > 0 for v in r["samples_per_s_all"])
        assert r["samples"] == 2 * 2048 and r["ratio"] > 0
    # The console table names every contender too.
    assert all(name in stdout for name in expected)


def test_quick_tables_training_benchmark_times_taktstock_and_the_hand_written_loop_per_encoding(tmp_path: Path) -> None:
    """`python -m benchmarks.tables --train --quick`: structure only (the numbers come from a quiet machine)."""
    result, stdout = _quick(tmp_path, "benchmarks.tables", "--train", "--quick", "--workdir", str(tmp_path / "work"))
    assert result["rows"] == 2000 and result["steps"] == 3 and result["threads"] == 1
    # onehot: one float matrix with the one-hot levels; index: the float columns plus 6 level indices (the 6 text columns).
    assert result["index_input_columns"][1] == 6 and result["onehot_input_columns"][0] > result["index_input_columns"][0]
    for encoding in ("onehot", "index"):
        rows = {r["contender"]: r for r in result[encoding]}
        assert set(rows) == {"hand-written loop", "taktstock train"}
        assert rows["hand-written loop"]["ratio"] == 1.0
        assert all(len(r["samples_per_s_all"]) == 1 and r["samples_per_s"] > 0 and r["ratio"] > 0 for r in rows.values())
    assert "x hand-written" in stdout


def test_quick_text_benchmark_times_taktstock_against_the_data_collator_loop(tmp_path: Path) -> None:
    """`python -m benchmarks.text --quick`: structure only (the numbers are recorded in docs/benchmarks.md)."""
    result, stdout = _quick(tmp_path, "benchmarks.text", "--quick", "--workdir", str(tmp_path / "work"))
    assert result["steps"] == 3 and result["batch"] == 32 and result["threads"] == 1 and result["train_samples"] > 3 * 32
    rows = {r["contender"]: r for r in result["rows"]}
    assert set(rows) == {"hand-written, DataCollatorWithPadding", "taktstock train"}
    assert rows["hand-written, DataCollatorWithPadding"]["ratio"] == 1.0
    assert all(len(r["samples_per_s_all"]) == 1 and r["samples_per_s"] > 0 and r["ratio"] > 0 for r in rows.values())
    assert "taktstock train" in stdout


def test_quick_lm_rss_benchmark_reports_main_and_worker_peaks_per_corpus_size(tmp_path: Path) -> None:
    """`python -m benchmarks.lm_rss --quick`: one fresh process per corpus size, main and worker peaks."""
    result, _ = _quick(tmp_path, "benchmarks.lm_rss", "--quick", "--workdir", str(tmp_path / "work"))
    assert result["steps"] == 3 and result["num_workers"] == 2
    small, large = result["rows"]
    assert (small["copies"], large["copies"]) == (1, 2) and large["train_tokens"] > small["train_tokens"]
    for row in (small, large):
        assert row["main_mib"] > 0 and row["worker_mib"] > 0  # the worker peak is read while the workers live
    assert small["main_ratio"] == 1.0 and large["main_ratio"] > 0 and large["worker_ratio"] > 0
