"""An sbatch script that trains one experiment on SLURM and survives time limits and preemption.

The script runs `taktstock train CONFIG OVERRIDES --run-dir RUN_DIR` on every node (one launcher per node:
`--nproc-per-node G --nnodes N --rdzv-endpoint FIRST_NODE:PORT`, or the plain command on one node with at
most one GPU). The run directory is fixed in the script, so a requeued job launches the same command,
which continues the run from its newest checkpoint (training/resume.py relaunch_plan).

Preemption: `--signal=B:USR1@GRACE` makes SLURM send SIGUSR1 to the batch shell GRACE seconds before the
time limit (or on a preemption with a grace time). The shell's trap forwards it to the job step (srun passes
it on to its tasks; a torchrun launcher passes it on to its workers); every rank checkpoints at the same step
boundary and exits with 138 (128 + SIGUSR1), and the script then requeues the job (`scontrol requeue`).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from taktstock.errors import UserError

PREEMPTED_EXIT = 138  # 128 + SIGUSR1: the run saved a checkpoint and stopped (training/signals.py)


@dataclass(frozen=True)
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 0
    time: str = "01:00:00"
    partition: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    account: str | None = None
    job_name: str = "taktstock"
    grace: int = 120
    port: int = 29500
    extra: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.nodes < 1:
            raise UserError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise UserError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        seconds = time_limit_seconds(self.time)
        if not 0 <= self.grace < seconds:
            raise UserError(f"--grace {self.grace} must be between 0 and the time limit ({self.time} = {seconds} s)")
        for line in self.extra:
            if "\n" in line:
                raise UserError(f"--sbatch: one option per flag, got {line!r}")


def time_limit_seconds(text: str) -> int:
    """SLURM's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS -> seconds (UserError otherwise)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UserError(f"--time: {text!r} is not a SLURM time limit (HH:MM:SS, MM:SS, D-HH:MM:SS, ...)")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # MM
        seconds = int(a) * 60
    if seconds <= 0:
        raise UserError(f"--time: {text!r} is not a positive time limit")
    return seconds


def train_command(python: str, config: Path, overrides: list[str], run_dir: Path, opts: SlurmOptions) -> list[str]:
    """The command each node runs (one task per node); `$HEAD` is the first node, set by the script."""
    cmd = [python, "-m", "taktstock", "train", str(config), *overrides, "--run-dir", str(run_dir)]
    if opts.nodes > 1 or opts.gpus_per_node > 1:
        cmd += ["--nproc-per-node", str(max(1, opts.gpus_per_node)), "--nnodes", str(opts.nodes)]
        cmd += ["--rdzv-endpoint", f"$HEAD:{opts.port}"]
    return cmd


def script(python: str, config: Path, overrides: list[str], run_dir: Path, workdir: Path, opts: SlurmOptions) -> str:
    """The sbatch script's text."""
    sbatch = [
        f"--job-name={opts.job_name}",
        f"--nodes={opts.nodes}",
        "--ntasks-per-node=1",
        f"--time={opts.time}",
        "--requeue",
        f"--signal=B:USR1@{opts.grace}",
        "--open-mode=append",  # a requeued job appends to the same log
        f"--output={run_dir / 'slurm-%j.out'}",
    ]
    if opts.gpus_per_node:
        sbatch.append(f"--gpus-per-node={opts.gpus_per_node}")
    for flag, value in (("partition", opts.partition), ("cpus-per-task", opts.cpus_per_task), ("mem", opts.mem), ("account", opts.account)):
        if value is not None:
            sbatch.append(f"--{flag}={value}")
    sbatch += [line if line.startswith("-") else f"--{line}" for line in opts.extra]
    cmd = " ".join(
        part if part.startswith("$HEAD") else shlex.quote(part) for part in train_command(python, config, overrides, run_dir, opts)
    )
    cmd = cmd.replace("$HEAD", '"$HEAD"')
    lines = [
        "#!/bin/bash",
        "# Written by `taktstock submit slurm`. A requeued job runs this script again: the same command with the same",
        "# --run-dir continues the run from its newest checkpoint.",
        *(f"#SBATCH {s}" for s in sbatch),
        "",
        "set -u",
        f"cd {shlex.quote(str(workdir))}",
        "export PYTHONUNBUFFERED=1",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # the c10d rendezvous host',
        'echo "taktstock: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
        "",
        "# SIGUSR1 (--signal=B:USR1) reaches this shell only: pass it on to the training step.",
        "PREEMPTED=0",
        "STEP=",
        'forward() { PREEMPTED=1; echo "taktstock: SIGUSR1: checkpointing"; [ -n "$STEP" ] && kill -USR1 "$STEP" 2>/dev/null; }',
        "trap forward USR1",
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {cmd} &",
        "STEP=$!",
        "while true; do",
        '  wait "$STEP"; RC=$?',
        '  kill -0 "$STEP" 2>/dev/null || break  # `wait` returns early when the trap runs: wait again',
        "done",
        "# 138 = 128 + SIGUSR1: every rank saved a checkpoint at the same step; 143 (SIGTERM) after our SIGUSR1 too.",
        f'if [ "$RC" -eq {PREEMPTED_EXIT} ] || {{ [ "$PREEMPTED" -eq 1 ] && [ "$RC" -eq 143 ]; }}; then',
        '  echo "taktstock: requeueing job $SLURM_JOB_ID; it continues from the checkpoint"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$RC"',
        "",
    ]
    return "\n".join(lines)


def sbatch_executable() -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise UserError("sbatch not found on PATH: run this on a SLURM login node (or --dry-run to print the script)")
    return exe


def sbatch(path: Path) -> str:
    """Submit the script with `sbatch --parsable`; returns the job id."""
    exe = sbatch_executable()
    proc = subprocess.run([exe, "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"sbatch {path} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]
