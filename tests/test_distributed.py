"""Multi-process training on CPU (gloo), end to end through `taktstock train --nproc-per-node`.

One single-process and one 2-process run of the same experiment are shared by several tests. The
digits train split (1257 samples) with a global batch of 64 ends each epoch with a 41-sample batch
split 21/20 over two ranks, so the equivalence tests also cover the reweighted uneven last batch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cli_env, run_cli, tiny_config, write_config
from safetensors.torch import load_file

from taktstock.data.datasets import ArraySplit
from taktstock.data.loaders import EpochBatchSampler, eval_batches

HELPERS = textwrap.dedent(
    """
    import os, signal, torch

    class DumpWeights:
        # Test-only: every rank writes its final weights, so ranks can be compared with each other.
        def on_train_end(self, trainer):
            path = os.path.join(os.environ["DUMP_DIR"], f"rank{os.environ.get('RANK', '0')}.pt")
            torch.save(trainer.p.model.state_dict(), path)

    class KillRank1AtStep12:
        # Test-only: the rank-1 worker of the first attempt dies by SIGKILL right after step 12.
        def on_step_end(self, trainer):
            first = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
            if trainer.state.step == 12 and os.environ.get("RANK") == "1" and first:
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _config(**train: Any) -> dict[str, Any]:
    # No dropout: the single- and multi-process runs must be numerically the same computation.
    return tiny_config(
        model={"name": "mlp", "hidden": [32], "dropout": 0.0},
        train={"epochs": 2, "batch_size": 64, "log_every_n_steps": 5, **train},
        checkpoint={"every_n_steps": 5},
    )


def _env(helpers: Path, **extra: str) -> dict[str, str]:
    env = cli_env(OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] += os.pathsep + str(helpers)
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same experiment trained by 1 process and by 2 processes (torchrun via --nproc-per-node)."""
    root = tmp_path_factory.mktemp("dist")
    helpers = root / "helpers"
    helpers.mkdir()
    (helpers / "dist_helpers.py").write_text(HELPERS)
    config = write_config(root / "config.yaml", _config(callbacks=["dist_helpers:DumpWeights"]))
    out: dict[str, Path] = {"root": root, "helpers": helpers, "config": config}
    for name, extra in (("single", []), ("double", ["--nproc-per-node", "2"])):
        dump = root / f"dump-{name}"
        dump.mkdir()
        proc = run_cli("train", str(config), "--run-dir", str(root / name), *extra, cwd=root, env=_env(helpers, DUMP_DIR=str(dump)))
        _check(proc)
        out[name], out[f"dump-{name}"] = root / name, dump
    return out


def test_two_process_run_matches_single_process_run(runs: dict[str, Path]) -> None:
    # Every rank ends with the same weights, and rank 0 saved exactly those.
    rank0 = torch.load(runs["dump-double"] / "rank0.pt")
    rank1 = torch.load(runs["dump-double"] / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    double = _weights(runs["double"] / "model.safetensors")
    assert all(torch.equal(double[k], rank0[k]) for k in rank0)
    # Same global batch and seed: the single-process result up to reduction order.
    single = _weights(runs["single"] / "model.safetensors")
    assert _max_diff(single, double) <= 1e-5

    # Validation metrics are computed over the whole split, synchronised across ranks.
    val_single = [r for r in _records(runs["single"]) if "val/loss" in r]
    val_double = [r for r in _records(runs["double"]) if "val/loss" in r]
    assert [r["step"] for r in val_single] == [r["step"] for r in val_double] == [20, 40]
    for a, b in zip(val_single, val_double, strict=True):
        assert a.keys() == b.keys()
        for key in (k for k in a if k.startswith(("val/", "train/"))):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    # Only rank 0 writes the run directory; run.json records one completed run.
    info = json.loads((runs["double"] / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 40


def test_killed_worker_restarts_and_resumes_bit_identically(runs: dict[str, Path]) -> None:
    root = runs["root"]
    config = write_config(root / "kill.yaml", _config(callbacks=["dist_helpers:KillRank1AtStep12"]))
    run = root / "killed"
    proc = run_cli(
        "train", str(config), "--nproc-per-node", "2", "--max-restarts", "1", "--run-dir", str(run), cwd=root, env=_env(runs["helpers"])
    )
    _check(proc)
    assert "resuming" in proc.stderr and "from step-00000010.pt" in proc.stderr
    ours, reference = _weights(run / "model.safetensors"), _weights(runs["double"] / "model.safetensors")
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    # The log is cut back to the checkpoint and continued: identical to the uninterrupted run.
    assert (run / "metrics.jsonl").read_bytes() == (runs["double"] / "metrics.jsonl").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_complete_a_run(runs: dict[str, Path]) -> None:
    """Node 0 through `taktstock train --nnodes 2`, node 1 through plain torchrun: one 2-process group."""
    root, port = runs["root"], str(_free_port())
    run = root / "two-nodes"
    config, env = str(runs["config"]), _env(runs["helpers"], DUMP_DIR=str(root))
    common = ["--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    node0 = [sys.executable, "-m", "taktstock", "train", config, "train.max_steps=10", "--run-dir", str(run), *common, "--node-rank", "0"]
    node1 = [sys.executable, "-m", "torch.distributed.run", *common, "--node-rank", "1"]
    node1 += ["-m", "taktstock", "train", config, "train.max_steps=10", "--run-dir", str(run)]
    procs = [subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in (node0, node1)]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 10
    assert f"run directory: {run}" in outputs[0][0]
    assert "run directory" not in outputs[1][0]  # rank 1 reports nothing


def test_global_batch_not_divisible_by_processes_is_exit_2(runs: dict[str, Path]) -> None:
    proc = run_cli("train", str(runs["config"]), "train.batch_size=63", "--nproc-per-node", "2", cwd=runs["root"])
    assert proc.returncode == 2
    assert "train.batch_size=63" in proc.stderr and "not divisible" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", str(runs["config"]), "train.batch_size=1", "--nproc-per-node", "2", cwd=runs["root"])
    assert proc.returncode == 2 and "per-process batch would be 0" in proc.stderr


def test_more_cuda_processes_than_gpus_is_exit_2(runs: dict[str, Path]) -> None:
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    proc = run_cli("train", str(runs["config"]), "train.device=cuda", "--nproc-per-node", str(have + 1), cwd=runs["root"])
    assert proc.returncode == 2
    assert f"{have} GPU(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_multi_node_run_without_run_dir_is_exit_2(runs: dict[str, Path]) -> None:
    proc = run_cli("train", str(runs["config"]), "--nnodes", "2", cwd=runs["root"])
    assert proc.returncode == 2 and "--run-dir" in proc.stderr


def test_resume_with_another_world_size_is_refused_unless_forced(runs: dict[str, Path]) -> None:
    run = runs["root"] / "resume-other-world"
    shutil.copytree(runs["double"], run)
    env = _env(runs["helpers"], DUMP_DIR=str(runs["root"]))
    # A single process (no launcher) and the launcher with one process: both refuse, naming the reason.
    for extra in ([], ["--nproc-per-node", "1"]):
        proc = run_cli("train", "--resume", str(run), "train.epochs=3", *extra, cwd=runs["root"], env=env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "written by 2 process(es), this run has 1" in proc.stderr and "--force" in proc.stderr
    proc = run_cli("train", "--resume", str(run), "train.epochs=3", "train.max_steps=42", "--force", cwd=runs["root"], env=env)
    _check(proc)
    assert json.loads((run / "run.json").read_text())["steps"] == 42


@pytest.mark.parametrize("n", [1257, 41, 128])
def test_ranks_together_see_every_sample_once_per_epoch(n: int) -> None:
    samplers = [EpochBatchSampler(n, 64, seed=3, rank=r, world_size=2) for r in range(2)]
    single = EpochBatchSampler(n, 64, seed=3)
    assert len(samplers[0]) == len(samplers[1]) == len(single)
    for epoch in range(2):
        parts = [s.local_batches(epoch) for s in samplers]
        for i, whole in enumerate(single.local_batches(epoch)):
            assert np.array_equal(np.concatenate([parts[0][i], parts[1][i]]), whole)
            assert samplers[0].global_batch_len(i) == len(whole)


def test_last_batch_smaller_than_world_size_is_skipped_by_all_ranks() -> None:
    # 65 = 64 + 1: one sample cannot be shared by two ranks; both skip it (documented limitation).
    samplers = [EpochBatchSampler(65, 64, seed=3, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in samplers] == [1, 1]
    parts = [s.local_batches(0) for s in samplers]
    assert [len(p) for p in parts] == [1, 1] and len(parts[0][0]) + len(parts[1][0]) == 64


def test_eval_shards_cover_the_split_exactly_once() -> None:
    x, y = np.arange(23, dtype=np.float32).reshape(23, 1), np.arange(23)
    seen = [int(t) for rank in range(3) for _, yb in eval_batches(ArraySplit(x, y), 4, rank, 3) for t in yb]
    assert seen == list(range(23))


def test_sigterm_to_the_launcher_stops_all_ranks_at_one_checkpoint(runs: dict[str, Path]) -> None:
    root = runs["root"]
    run = root / "preempted"
    config = write_config(root / "long.yaml", _config(epochs=200))
    cmd = [sys.executable, "-m", "taktstock", "train", str(config), "--nproc-per-node", "2", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=root, env=_env(runs["helpers"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("step-*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)  # a rank that hung would run into this timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-4000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "preempted"
    assert f"saved {run}/checkpoints/step-{info['steps']:08d}.pt" in err and "--nproc-per-node 2" in err
    assert "Traceback" not in err


def test_fsdp_run_survives_a_killed_worker_and_matches_single_process(runs: dict[str, Path]) -> None:
    """FSDP2 on CPU/gloo: sharded training, full-tensor checkpoints, sharded reload after an elastic restart."""
    root = runs["root"]
    cfg = _config(callbacks=["dist_helpers:KillRank1AtStep12"]) | {"distributed": {"strategy": "fsdp"}}
    run = root / "fsdp"
    proc = run_cli(
        "train", str(write_config(root / "fsdp.yaml", cfg)), "--nproc-per-node", "2", "--max-restarts", "1", "--run-dir", str(run),
        cwd=root, env=_env(runs["helpers"]),
    )  # fmt: skip
    _check(proc)
    assert "from step-00000010.pt" in proc.stderr
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    single = _weights(runs["single"] / "model.safetensors")
    # Checkpoints and weight files hold full, unsharded tensors under the plain model's names.
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in single.items()}
    assert _max_diff(_weights(run / "model.safetensors"), single) <= 1e-5
    val_fsdp = [r for r in _records(run) if "val/loss" in r]
    val_single = [r for r in _records(runs["single"]) if "val/loss" in r]
    assert len(val_fsdp) == len(val_single) == 2
    for a, b in zip(val_single, val_fsdp, strict=True):
        assert all(abs(a[k] - b[k]) <= 1e-6 for k in a if k.startswith("val/"))


def test_launcher_builds_torchrun_command_lines() -> None:
    from taktstock.commands.launch import LaunchOptions, torchrun_argv

    worker = ["train", "cfg.yaml", "--run-dir", "runs/x"]
    single_node = torchrun_argv(LaunchOptions(nproc_per_node=4), worker)
    assert "--standalone" in single_node and single_node[-6:] == ["-m", "taktstock", *worker]
    static = torchrun_argv(LaunchOptions(2, nnodes=3, node_rank=2, master_addr="n0", master_port=1234, max_restarts=1), worker)
    assert " ".join(static).startswith("--nproc-per-node 2 --nnodes 3 --max-restarts 1 --node-rank 2 --master-addr n0 --master-port 1234")
    dynamic = torchrun_argv(LaunchOptions(2, nnodes=2, rdzv_endpoint="n0:29400"), worker)
    assert "--rdzv-backend c10d --rdzv-endpoint n0:29400" in " ".join(dynamic) and "--node-rank" not in dynamic


def test_rank_and_world_size_come_from_torchrun_or_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from taktstock.training.distributed import DistEnv

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    assert DistEnv.from_environ() == DistEnv(0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert DistEnv.from_environ() == DistEnv(0, 1, 0)  # no MASTER_ADDR: a plain SLURM job step, not a group
    monkeypatch.setenv("MASTER_ADDR", "node0")
    assert DistEnv.from_environ() == DistEnv(5, 8, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert DistEnv.from_environ() == DistEnv(3, 4, 3)  # torchrun's variables win
