"""`taktstock train CONFIG --nproc-per-node N`: start the run through torch.distributed.run.

torchrun's own agent does the work (rendezvous, worker start-up and monitoring, elastic restarts);
this module only checks what can be checked before any worker starts, fixes the run directory
once for all workers, and turns a worker failure into taktstock's exit codes.

Workers run `python -m taktstock train ... --run-dir RUN_DIR`. On an elastic restart
(TORCHELASTIC_RESTART_COUNT > 0) `taktstock train` resumes RUN_DIR from its newest valid checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taktstock.errors import ConfigError, UserError

if TYPE_CHECKING:
    from taktstock.config.schema import Config


@dataclass(frozen=True)
class LaunchOptions:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def validate(self) -> None:
        if self.nproc_per_node < 1:
            raise UserError(f"--nproc-per-node must be at least 1, got {self.nproc_per_node}")
        if self.nnodes < 1:
            raise UserError(f"--nnodes must be at least 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node-rank must be between 0 and {self.nnodes - 1} (--nnodes {self.nnodes}), got {self.node_rank}")
        if self.max_restarts < 0:
            raise UserError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        if self.rdzv_endpoint and (self.master_addr or self.master_port):
            raise UserError("use either --rdzv-endpoint or --master-addr/--master-port, not both")
        if self.rdzv_endpoint and ":" not in self.rdzv_endpoint:
            raise UserError(f"--rdzv-endpoint must be HOST:PORT, got {self.rdzv_endpoint!r}")


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 outside torchrun and on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def torchrun_argv(opts: LaunchOptions, worker_args: list[str]) -> list[str]:
    """torchrun's command line for these options, running `python -m taktstock WORKER_ARGS`."""
    argv = ["--nproc-per-node", str(opts.nproc_per_node), "--nnodes", str(opts.nnodes), "--max-restarts", str(opts.max_restarts)]
    if opts.rdzv_endpoint:
        # Dynamic rendezvous: node ranks are assigned by the c10d store on the endpoint host.
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", opts.rdzv_endpoint, "--rdzv-id", "taktstock"]
    elif opts.nnodes > 1 or opts.master_addr or opts.master_port:
        argv += ["--node-rank", str(opts.node_rank), "--master-addr", opts.master_addr or "127.0.0.1"]
        argv += ["--master-port", str(opts.master_port or 29500)]
    else:
        argv += ["--standalone"]  # one node: local rendezvous on a free port
    return [*argv, "-m", "taktstock", *worker_args]


def check_devices(config: Config, nproc_per_node: int) -> None:
    """More CUDA processes than GPUs (or SyncBatchNorm on CPU) is an error before anything starts."""
    import torch

    from taktstock.training.distributed import SYNC_BN_NEEDS_CUDA

    device = config.train.device
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        if config.distributed.sync_batchnorm:
            raise ConfigError(SYNC_BN_NEEDS_CUDA)
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc_per_node > count:
        raise UserError(
            f"--nproc-per-node {nproc_per_node} starts {nproc_per_node} CUDA processes but this machine has {count} GPU(s); "
            "lower --nproc-per-node or set train.device=cpu"
        )


def checkpoint_world_size(run_dir: Path) -> tuple[str, int] | None:
    """(file name, world size) of the newest valid checkpoint in RUN_DIR, or None."""
    from taktstock.checkpoint.manager import CheckpointManager, load_checkpoint
    from taktstock.run_dir import RunDir

    info = CheckpointManager(RunDir(run_dir).checkpoints).latest_valid()
    if info is None:
        return None
    return info.path.name, int(load_checkpoint(info.path).get("world_size", 1))


class LaunchFailed(Exception):
    """A worker failed; `exit_code` is what `taktstock train` exits with."""

    def __init__(self, exit_code: int, message: str | None) -> None:
        super().__init__(message or "")
        self.exit_code, self.message = exit_code, message


def launch(
    config_path: Path | None,
    overrides: list[str],
    run_dir: str | Path | None,
    resume: str | Path | None,
    force: bool,
    opts: LaunchOptions,
    overwrite: bool = False,
) -> Path:
    """Run the experiment on `opts.world_size` processes and return its run directory (a URL's: its local mirror).

    A --run-dir holding a run is decided here, once, before any worker starts (training/resume.py
    relaunch_plan): continued with --resume, left alone when complete, replaced only with --overwrite.
    Raises UserError for problems found before start-up, LaunchFailed when a worker fails.
    """
    from taktstock.checkpoint.checkpointer import check_resume_world_size
    from taktstock.config.loader import load_config
    from taktstock.config.paths import with_absolute_paths
    from taktstock.remote.location import RemoteRun, is_url
    from taktstock.run_dir import RunDir
    from taktstock.training.distributed import check_world_size
    from taktstock.training.resume import check_resume_compatible, relaunch_plan

    if "WORLD_SIZE" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        raise UserError("--nproc-per-node: already running under torchrun; drop the launcher options (or run taktstock train directly)")
    opts.validate()
    url = next((u for u in (resume, run_dir) if is_url(u)), None)
    if url is not None:  # checked here on the mirror; the workers get the URL and upload (see remote/sync.py)
        remote = RemoteRun(str(url))
        remote.probe()
        local = remote.pull()
        resume, run_dir = (local if resume is not None else None), (local if run_dir is not None else None)
    resume, run_dir = (Path(resume) if resume is not None else None), (Path(run_dir) if run_dir is not None else None)
    if resume is not None:
        config = check_resume_compatible(RunDir(resume), config_path, overrides, force)
    else:
        config = load_config(config_path, overrides)
        if run_dir is not None:
            plan = relaunch_plan(RunDir(Path(run_dir)), with_absolute_paths(config), overwrite)
            if plan == "complete":
                print(f"{run_dir} holds a completed run: nothing to train (--overwrite trains it again)", file=sys.stderr)
                return Path(run_dir)
            if plan == "resume":  # the same command launched again: every worker continues the run
                resume, overwrite = Path(run_dir), False
    check_world_size(config, opts.world_size)
    check_devices(config, opts.nproc_per_node)
    if resume is not None:
        found = checkpoint_world_size(resume)
        if found is not None:
            check_resume_world_size(*found, opts.world_size, force)
    # The run directory is named once, here: workers started at different times must agree on it.
    if resume is not None:
        target = Path(resume)
    elif run_dir is not None:
        target = Path(run_dir)
    elif opts.nnodes > 1:
        raise UserError("multi-node runs need --run-dir: the same directory (on a shared filesystem) on every node")
    else:
        target = RunDir.new(config.experiment.output_dir, config.experiment.name).root
    worker = ["train", *([str(config_path)] if config_path else []), *overrides]
    worker += ["--resume", str(url or target)] if resume is not None else ["--run-dir", str(url or target)]
    if force:
        worker.append("--force")
    if overwrite:
        worker.append("--overwrite")  # only rank 0 clears the old run, before any rank writes
    # Workers inherit these: the launcher reports for the group; CPU threads are shared out (torchrun's default is 1).
    os.environ["TAKTSTOCK_LAUNCHED"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cpus() // opts.nproc_per_node)))
    _run_torchrun(torchrun_argv(opts, worker))
    return target


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_torchrun(argv: list[str]) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    forwarding = _forward_usr1_to_workers()
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:  # killed by a signal
            raise LaunchFailed(128 - code, f"worker rank {rank} was killed by {failure.signal_name()}") from None
        # The worker printed its own error (exit 2: user error, 1: aborted, 128+N: preempted by signal N).
        raise LaunchFailed(
            code or 1, None if code in (1, 2) or code > 128 else f"worker rank {rank} failed with exit code {code}"
        ) from None
    except SignalException as exc:
        raise LaunchFailed(128 + int(exc.sigval), None) from None
    finally:
        if forwarding is not None:
            signal.signal(signal.SIGUSR1, forwarding)


def _forward_usr1_to_workers() -> Any:
    """SIGUSR1 (SLURM's warning before a time limit or preemption) to this launcher goes on to every worker.

    torchrun's workers run in their own sessions, so a signal to the launcher does not reach them, and
    SIGUSR1's default action would end the launcher. Each worker checkpoints at the same step boundary
    (training/signals.py) and exits with 128 + 10. Returns the previous handler (None where there is no SIGUSR1).
    """
    if not hasattr(signal, "SIGUSR1"):
        return None

    def forward(signum: int, frame: Any) -> None:
        for pid in _children(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    try:
        return signal.signal(signal.SIGUSR1, forward)
    except ValueError:  # not the main thread
        return None


def _children(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc; empty elsewhere)."""
    out: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in path.read_text().split()]
    return out


def run_workers(opts: LaunchOptions, worker_args: list[str]) -> None:
    """Run `taktstock WORKER_ARGS` on `opts.world_size` processes (a tool that needs no run directory, e.g. find-lr).

    Raises UserError before start-up, LaunchFailed when a worker fails."""
    if "WORLD_SIZE" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        raise UserError("--nproc-per-node: already running under torchrun; drop the launcher options")
    opts.validate()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cpus() // opts.nproc_per_node)))
    _run_torchrun(torchrun_argv(opts, worker_args))
