"""Relaunching `taktstock train CONFIG --run-dir R` (a SLURM requeue, a pod restart, a pipeline retry) continues
the run in R, never wipes it: after a SIGKILL the same command ends bit-identical to an uninterrupted run and
every checkpoint written before the kill is kept untouched; a finished run is left as it is; a different
config exits 2 without touching R; only --overwrite replaces it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import cli_env, run_cli, tiny_config, write_config
from resume_harness import ForkServer, count_lines, shared_server, wait_until

from taktstock.checkpoint.manager import CheckpointManager, load_checkpoint

pytestmark = pytest.mark.timeout(300)


def relaunch_config() -> dict:
    return tiny_config(
        experiment={"name": "relaunch"},
        seed=5,
        data={"source": "digits", "augment": {"shift": 1, "noise_std": 0.1}},
        model={"name": "mlp", "hidden": [32], "dropout": 0.2},
        optim={"name": "adamw", "lr": 0.01},
        scheduler={"name": "cosine"},
        train={"epochs": 4, "batch_size": 32, "log_every_n_steps": 1, "val_every_n_steps": 5},
        # Every checkpoint stays, so "nothing written before the kill was removed" covers all of them.
        checkpoint={"every_n_steps": 4, "keep_last": 1000},
        logging={"tensorboard": False, "plots": False, "progress": "off"},
    )


@pytest.fixture(scope="module")
def server() -> ForkServer:
    return shared_server()


@pytest.fixture(scope="module")
def reference(server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config file, run directory) of an uninterrupted run."""
    root = tmp_path_factory.mktemp("relaunch")
    cfg = write_config(root / "config.yaml", relaunch_config())
    rc = server.run(["train", str(cfg), "--run-dir", str(root / "reference")], root, root / "reference.log")
    assert rc == 0, (root / "reference.log").read_text()
    return cfg, root / "reference"


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: relative path -> (bytes, mtime in ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def committed_checkpoints(ckpt_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Periodic checkpoint files whose manifest exists (written completely): name -> (bytes, mtime)."""
    names = [p for p in ckpt_dir.glob("step-*.pt") if p.with_suffix(".json").is_file()]
    files = [f for p in names for f in (p, p.with_suffix(".json"))]
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def test_sigkill_then_the_same_command_continues_from_the_newest_checkpoint_bit_identical(
    server: ForkServer, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg, ref = reference
    run = tmp_path / "run"
    command = ["train", str(cfg), "--run-dir", str(run)]
    child = server.start(command, tmp_path, tmp_path / "first.log")
    # Killed mid-run, once a few checkpoints exist (and well before the end).
    total = count_lines(ref / "metrics.jsonl")
    assert wait_until(lambda: count_lines(run / "metrics.jsonl") >= total // 2, child, 120), child.output()
    child.kill_group()
    assert child.wait(60) == -signal.SIGKILL
    before = committed_checkpoints(run / "checkpoints")
    newest = CheckpointManager(run / "checkpoints").latest_valid()
    assert newest is not None and len(before) >= 4, sorted(before)

    relaunched = server.start(command, tmp_path, tmp_path / "second.log")
    assert relaunched.wait(120) == 0, relaunched.output()
    log = relaunched.output()
    # The path under test really ran: it continued from the newest checkpoint at kill time, not from step 0.
    assert f"resuming {run} from {newest.path.name} (step {newest.step}," in log, log
    assert "replacing" not in log and "from the beginning" not in log
    assert "different environment" not in log  # the same environment: nothing alarming
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (run / "best.safetensors").read_bytes() == (ref / "best.safetensors").read_bytes()
    assert (run / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
    # Nothing written before the kill was removed or rewritten.
    after = committed_checkpoints(run / "checkpoints")
    assert {name: after.get(name) for name in before} == before


def test_relaunching_a_finished_run_changes_no_file_and_evaluate_still_evaluates(
    server: ForkServer, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg, ref = reference
    run = tmp_path / "done"
    shutil.copytree(ref, run)
    before = snapshot(run)
    # logging.* cannot change the result: the relaunch counts as the same command.
    for extra in ([], ["logging.progress=on"]):
        child = server.start(["train", str(cfg), *extra, "--run-dir", str(run)], tmp_path, tmp_path / "again.log")
        assert child.wait(120) == 0, child.output()
        steps = json.loads((run / "run.json").read_text())["steps"]
        assert f"{run} holds a completed run (step {steps}): nothing to train" in child.output()
        assert snapshot(run) == before
    child = server.start(["train", str(cfg), "--run-dir", str(run), "--evaluate"], tmp_path, tmp_path / "eval.log")
    assert child.wait(120) == 0, child.output()
    assert json.loads((run / "eval" / "metrics.json").read_text())["split"] == "test"
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("eval/")} == before


@pytest.mark.parametrize("state", ["finished", "killed"])
def test_a_different_config_exits_2_naming_the_keys_and_leaves_the_directory_byte_identical(
    server: ForkServer, reference: tuple[Path, Path], tmp_path: Path, state: str
) -> None:
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    if state == "killed":  # an unfinished run is protected the same way
        info = json.loads((run / "run.json").read_text()) | {"status": "running", "process": {}}
        (run / "run.json").write_text(json.dumps(info))
    before = snapshot(run)
    args = ["train", str(cfg), "optim.lr=0.02", "seed=6", "--run-dir", str(run)]
    child = server.start(args, tmp_path, tmp_path / "out.log", err=tmp_path / "err.log")
    assert child.wait(120) == 2
    err = (tmp_path / "err.log").read_text()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "optim.lr (0.01 -> 0.02)" in err and "seed (5 -> 6)" in err
    assert f"--resume {run}" in err and "--overwrite" in err
    assert snapshot(run) == before


def test_overwrite_replaces_the_run(server: ForkServer, reference: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    child = server.start(["train", str(cfg), "train.epochs=1", "--run-dir", str(run), "--overwrite"], tmp_path, tmp_path / "o.log")
    assert child.wait(120) == 0, child.output()
    assert f"--overwrite: replacing the earlier run in {run}" in child.output()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "run.json").read_text())["steps"]
    assert max(steps) == final < json.loads((ref / "run.json").read_text())["steps"]
    # No checkpoint of the old, longer run survives to be picked by a later resume.
    assert max(int(re.findall(r"\d+", p.name)[0]) for p in (run / "checkpoints").glob("step-*.pt")) <= final


def test_a_resume_in_another_environment_says_why_bit_exactness_may_not_hold(
    server: ForkServer, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    _, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    newest = CheckpointManager(run / "checkpoints").latest_valid()
    assert newest is not None
    state = load_checkpoint(newest.path)
    recorded = state["environment"]
    assert recorded["torch"] == torch.__version__ and recorded["world_size"] == 1 and recorded["device"] == "cpu"
    assert recorded["deterministic_algorithms"] is True and "numpy" in recorded["packages"]
    # As if written by another torch: a valid checkpoint (its manifest hash updated) with another version.
    state["environment"]["torch"] = "1.13.1"
    torch.save(state, newest.path)
    manifest = newest.path.with_suffix(".json")
    data = json.loads(manifest.read_text()) | {"sha256": hashlib.sha256(newest.path.read_bytes()).hexdigest()}
    manifest.write_text(json.dumps(data | {"size": newest.path.stat().st_size}))
    child = server.start(["train", "--resume", str(run), "train.epochs=5"], tmp_path, tmp_path / "r.log")
    assert child.wait(120) == 0, child.output()
    log = child.output()
    assert f"resuming {run} from {newest.path.name} (step {newest.step}," in log  # it still resumes
    (line,) = [x for x in log.splitlines() if "different environment" in x]
    assert f"torch 1.13.1 -> {torch.__version__}" in line and "may differ in the last bits" in line, line


def test_the_multi_process_launcher_decides_before_any_worker_starts(reference: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = snapshot(run)
    env = cli_env(OMP_NUM_THREADS="1")
    done = run_cli("train", str(cfg), "--run-dir", str(run), "--nproc-per-node", "2", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert f"{run} holds a completed run: nothing to train" in done.stderr and "run directory:" in done.stdout
    other = run_cli("train", str(cfg), "seed=6", "--run-dir", str(run), "--nproc-per-node", "2", cwd=tmp_path, env=env)
    assert other.returncode == 2 and "seed (5 -> 6)" in other.stderr and "--overwrite" in other.stderr
    assert snapshot(run) == before


def test_a_run_still_being_trained_is_not_launched_into_twice(server: ForkServer, reference: tuple[Path, Path], tmp_path: Path) -> None:
    from taktstock.utils.process import this_process

    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    # As if this (live) test process were training the run.
    info = json.loads((run / "run.json").read_text()) | {"status": "running", "process": this_process()}
    (run / "run.json").write_text(json.dumps(info))
    before = snapshot(run)
    child = server.start(["train", str(cfg), "--run-dir", str(run)], tmp_path, tmp_path / "out.log", err=tmp_path / "err.log")
    assert child.wait(120) == 2
    err = (tmp_path / "err.log").read_text()
    assert err.strip() == f"error: --run-dir: {run} is being trained right now (pid {os.getpid()}); wait for it or stop it first"
    assert snapshot(run) == before
