"""`taktstock submit slurm` on a real (one-node) SLURM cluster started by tests/slurm_cluster.py.

A job preempted by SIGUSR1 (as `--signal=B:USR1@grace` sends it ahead of a time limit) checkpoints, requeues
itself, and its requeued run (the same script, the same command) continues from that checkpoint and ends
bit-identical to an uninterrupted run; so does a job whose real time limit runs out mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli_env, run_cli, tiny_config, write_config
from resume_harness import ForkServer, shared_server
from slurm_cluster import SlurmCluster, missing, running_daemons

# The first attempt of a job trains slowly (so the signal lands mid-run); a requeued attempt at full speed.
# Sleeping changes no number: the weights are compared with a run that never sleeps.
SLOW_STEP = """
import os, time
from taktstock.training.step import default_step

FIRST_ATTEMPT = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
DELAY = float(os.environ.get("SLOW_STEP_S", "0")) if FIRST_ATTEMPT else 0.0


def step(model, batch, loss_fn):
    if model.training and DELAY:
        time.sleep(DELAY)
    return default_step(model, batch, loss_fn)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)  # .ci/run installs slurm-wlm and munge: in CI this must run
        pytest.skip(why)
    # Short path: slurmd's and munged's sockets live under it.
    cluster = SlurmCluster(Path(tmp_path_factory.mktemp("slurm")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert running_daemons(cluster.conf) == [], "a SLURM/munge daemon was left running"


@pytest.fixture(scope="module")
def server() -> ForkServer:
    return shared_server()


def config(epochs: int) -> dict:
    return tiny_config(
        experiment={"name": "slurm"},
        seed=7,
        data={"source": "digits", "augment": {"shift": 1, "noise_std": 0.1}},
        model={"name": "mlp", "hidden": [32], "dropout": 0.2},
        optim={"name": "adamw", "lr": 0.01},
        scheduler={"name": "cosine"},
        train={"epochs": epochs, "batch_size": 32, "log_every_n_steps": 1, "val_every_n_steps": 10, "step_fn": "slowstep:step"},
        checkpoint={"every_n_steps": 5, "keep_last": 1000},
        logging={"tensorboard": False, "plots": False, "progress": "off"},
    )


def project(root: Path, server: ForkServer, epochs: int) -> tuple[Path, Path]:
    """(config file, uninterrupted reference run) in `root`."""
    (root / "slowstep.py").write_text(SLOW_STEP)
    cfg = write_config(root / "c.yaml", config(epochs))
    rc = server.run(["train", str(cfg), "--run-dir", str(root / "reference")], root, root / "reference.log")
    assert rc == 0, (root / "reference.log").read_text()
    return cfg, root / "reference"


def submit(cluster: SlurmCluster, root: Path, *options: str, slow: float) -> str:
    env = cli_env(SLURM_CONF=str(cluster.conf), SLOW_STEP_S=str(slow), OMP_NUM_THREADS="1")
    proc = run_cli("submit", "slurm", "c.yaml", *options, "--run-dir", "run", cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"submitted job (\d+): run directory (\S+)", proc.stdout)
    assert match and Path(match[2]) == (root / "run").resolve(), proc.stdout
    assert "#SBATCH --requeue" in (root / "run" / "slurm.sbatch").read_text()
    return match[1]


def wait_for(predicate, what: str, cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")
        time.sleep(0.1)


def finish_after_requeues(cluster: SlurmCluster, job: str, timeout: float) -> int:
    """Release the job each time it waits after a requeue (BeginTime), until it completes; returns the requeues."""
    deadline, released, waiting_since = time.monotonic() + timeout, set(), {}
    while True:
        info = cluster.job(job)
        state, restarts = info.get("JobState"), int(info.get("Restarts", "0"))
        if state == "COMPLETED":
            return restarts
        assert state not in ("FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY"), f"job {job}: {info}\n{cluster.logs()}"
        if state == "PENDING" and info.get("Reason") == "BeginTime" and restarts not in released:
            # Released once the node has cleaned up the old attempt, and not within the second of the requeue:
            # slurmd refuses a job credential issued in the second its predecessor's was revoked.
            waiting_since.setdefault(restarts, time.monotonic())
            if cluster.node_state() == "idle" and time.monotonic() - waiting_since[restarts] > 1.5:
                cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
                released.add(restarts)
        assert time.monotonic() < deadline, f"job {job} did not complete: {info}\n{cluster.logs()}"
        time.sleep(0.2)


def assert_same_run(run: Path, ref: Path) -> None:
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def resumed_from(log: str, run: Path) -> tuple[str, int]:
    """(checkpoint file, step) the requeued attempt continued from, after the preempted attempt saved it."""
    saved = re.search(r"SIGUSR1: saved (\S+); ", log)
    resumed = re.search(rf"resuming {re.escape(str(run))} from (\S+) \(step (\d+),", log)
    assert saved and resumed, log
    assert Path(saved[1]).name == resumed[1], log  # the checkpoint written on SIGUSR1 is the one continued from
    return resumed[1], int(resumed[2])


@pytest.mark.timeout(150)
def test_sigusr1_checkpoints_requeues_and_the_job_ends_bit_identical(cluster: SlurmCluster, server: ForkServer, tmp_path: Path) -> None:
    _, ref = project(tmp_path, server, epochs=2)
    job = submit(cluster, tmp_path, "--time", "10:00", "--grace", "60", slow=0.05)
    run = (tmp_path / "run").resolve()
    wait_for(lambda: (run / "checkpoints" / "last.json").is_file(), "a first checkpoint", cluster, 90)
    # What SLURM does ahead of a time limit with --signal=B:USR1: signal the batch shell.
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    assert finish_after_requeues(cluster, job, 100) == 1
    log = (run / f"slurm-{job}.out").read_text()
    _, step = resumed_from(log, run)
    assert 0 < step < json.loads((ref / "run.json").read_text())["steps"]
    assert "taktstock: requeueing job" in log and "(restart 1)" in log
    assert_same_run(run, ref)


@pytest.mark.timeout(170)
def test_a_job_whose_time_limit_runs_out_mid_run_finishes_after_its_requeue(
    cluster: SlurmCluster, server: ForkServer, tmp_path: Path
) -> None:
    _, ref = project(tmp_path, server, epochs=2)
    # SLURM's smallest limit is a minute. SIGUSR1 is due 40 s before it, but SLURM may send it up to a minute
    # early: it lands during start-up (remembered: the run checkpoints after its first step) or mid-run. The
    # first attempt would need about two minutes at 1.5 s per step (80 steps): it cannot finish in time.
    job = submit(cluster, tmp_path, "--time", "1:00", "--grace", "40", slow=1.5)
    restarts = finish_after_requeues(cluster, job, 150)
    assert restarts >= 1
    run = (tmp_path / "run").resolve()
    log = (run / f"slurm-{job}.out").read_text()
    resumed_from(log, run)
    assert "taktstock: SIGUSR1: checkpointing" in log
    assert_same_run(run, ref)


def test_submit_without_sbatch_exits_2_and_dry_run_prints_the_script(tmp_path: Path) -> None:
    write_config(tmp_path / "c.yaml", tiny_config())
    env = cli_env(PATH=os.path.dirname(os.path.realpath(subprocess.__file__)))  # no sbatch on this PATH
    proc = run_cli("submit", "slurm", "c.yaml", "--time", "2:00:00", "--run-dir", "r", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: sbatch not found on PATH: run this on a SLURM login node (or --dry-run to print the script)"
    )
    args = ["submit", "slurm", "c.yaml", "optim.lr=0.01", "--nodes", "2", "--gpus-per-node", "4", "--time", "2:00:00"]
    proc = run_cli(*args, "--partition", "gpu", "--grace", "300", "--run-dir", "r", "--dry-run", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4"):
        assert line in text.splitlines(), line
    assert "optim.lr=0.01 --run-dir " + str((tmp_path / "r").resolve()) in text
    assert '--nproc-per-node 4 --nnodes 2 --rdzv-endpoint "$HEAD":29500' in text
    assert not (tmp_path / "r").exists()  # --dry-run writes nothing
    proc = run_cli("submit", "slurm", "c.yaml", "--time", "1:00", "--grace", "60", "--dry-run", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "--grace 60" in proc.stderr


@pytest.mark.timeout(240)
def test_sigusr1_to_the_per_node_launcher_reaches_every_worker_and_the_same_command_continues(tmp_path: Path) -> None:
    """What a multi-GPU SLURM node runs: `train --nproc-per-node 2`; srun passes SIGUSR1 to that launcher only."""
    (tmp_path / "slowstep.py").write_text(SLOW_STEP)
    cfg = write_config(tmp_path / "c.yaml", config(epochs=1))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "taktstock", "train", str(cfg), "--run-dir", str(run), "--nproc-per-node", "2"]
    env = cli_env(OMP_NUM_THREADS="1", PYTHONPATH=f"{cli_env()['PYTHONPATH']}{os.pathsep}{tmp_path}")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env | {"SLOW_STEP_S": "0.05"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("step-*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGUSR1, err[-4000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "preempted" and "Traceback" not in err
    saved = f"{run}/checkpoints/step-{info['steps']:08d}.pt"
    assert f"SIGUSR1: saved {saved}" in err
    again = run_cli("train", str(cfg), "--run-dir", str(run), "--nproc-per-node", "2", cwd=tmp_path, env=env, timeout=180)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming {run} from step-{info['steps']:08d}.pt (step {info['steps']}," in again.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
