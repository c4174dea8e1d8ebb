"""Kill-and-resume harness shared by tests/test_resume_kill.py, tests/test_checkpoint_safety.py and scripts/kill_soak.py.

Starting `python -m taktstock` costs seconds (torch, scikit-learn, torchmetrics imports), which would
dominate a test that kills and restarts training dozens of times. A *fork server* pays that once:
a fresh interpreter imports taktstock and its heavy dependencies without running any tensor op,
then forks one child per `taktstock ...` command. Each child is a real OS process running the real
CLI (`taktstock.cli.main`) that we SIGKILL/SIGTERM/SIGINT like any other; the server only reaps it
and reports its exit code. Children never share state with each other: each is a fresh fork of the
pristine server.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_SERVER = r"""
import json, os, sys, traceback
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy, torch, sklearn.datasets, torchmetrics, yaml, safetensors.torch  # noqa: F401  the slow imports, once
try:
    import torch.utils.tensorboard  # noqa: F401
except ImportError:
    pass
torch.use_deterministic_algorithms(True, warn_only=True)  # its lazy imports, once
import taktstock.cli, taktstock.training.run, taktstock.evaluation.evaluate  # noqa: F401
from taktstock.commands import config_cmd, evaluate_cmd, prepare_cmd, train_cmd  # noqa: F401
out = sys.stdout
out.write(json.dumps({"ready": os.getpid()}) + "\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)  # its own process group: DataLoader workers die with it on SIGKILL of the group
            os.chdir(req["cwd"])
            if req.get("replace_env"):  # the whole environment, as subprocess.run(env=...) gives it
                os.environ.clear()
            os.environ.update(req["env"])
            # What a fresh interpreter would put on sys.path from this PYTHONPATH ('' is already the cwd).
            added = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e and e not in sys.path]
            sys.path[1:1] = added
            for entry in added:  # site runs the first sitecustomize on the path at start-up; so does this child
                if os.path.isfile(os.path.join(entry, "sitecustomize.py")):
                    import runpy; runpy.run_path(os.path.join(entry, "sitecustomize.py"), run_name="sitecustomize")
                    break
            import importlib; importlib.invalidate_caches()
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if req.get("err") else fd
            os.dup2(fd, 1); os.dup2(err, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            sys.stdin = open(os.devnull)
            sys.argv = ["taktstock", *req["args"]]
            try:
                taktstock.cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: no window in which the child is not yet its own group
    except OSError:
        pass
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status)}) + "\n"); out.flush()
"""


class ForkServer:
    """Runs `taktstock ARGS` in forked children of one pre-imported interpreter (see module docstring)."""

    def __init__(self, start_timeout: float = 120.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1
        )
        self._read(start_timeout)  # {"ready": pid}

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"fork server gave no answer within {timeout:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited ({self.proc.poll()})")
        return json.loads(line)

    def start(
        self, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None, err: Path | None = None, replace_env: bool = False
    ) -> Child:
        """Fork `taktstock ARGS`: stdout to `log`, stderr to `err` (default: `log` too); `env` updates the server's
        environment, or replaces it with `replace_env`."""
        assert self.proc.stdin is not None
        req = {
            "args": args,
            "cwd": str(cwd),
            "log": str(log),
            "env": env or {},
            "err": str(err) if err else None,
            "replace_env": replace_env,
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return Child(self, self._read(30)["pid"], log)

    def run(self, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 120) -> int:
        return self.start(args, cwd, log, env).wait(timeout)

    def close(self) -> None:
        """Stop the idle server (it holds no state worth a graceful exit)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


_shared: ForkServer | None = None


def shared_server() -> ForkServer:
    """One fork server for the whole test session (started on first use, stopped at interpreter exit).

    It also exits by itself when its parent goes away (its stdin closes).
    """
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        _shared = ForkServer()
        atexit.register(_shared.close)
    return _shared


@dataclass
class Child:
    server: ForkServer
    pid: int
    log: Path
    rc: int | None = None

    def signal(self, sig: int) -> None:
        """Send `sig` to the training process only (as a scheduler or `kill PID` would)."""
        if self.rc is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process and its DataLoader workers, as Ctrl-C in a terminal does."""
        if self.rc is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                self.signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the training process and its DataLoader workers (like an OOM killer or a lost node)."""
        if self.rc is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                self.signal(signal.SIGKILL)

    def poll(self) -> int | None:
        if self.rc is None:
            ready, _, _ = select.select([self.server.proc.stdout], [], [], 0)
            if ready:
                self.rc = self.server._read(1)["rc"]
        return self.rc

    def wait(self, timeout: float = 120) -> int:
        if self.rc is None:
            try:
                self.rc = self.server._read(timeout)["rc"]
            except TimeoutError:
                self.kill_group()
                self.rc = self.server._read(30)["rc"]
                raise TimeoutError(f"taktstock run {self.pid} did not finish within {timeout:.0f}s:\n{self.output()}") from None
        return self.rc

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def checkpoint_write_in_progress(ckpt_dir: Path) -> bool:
    """A temporary file exists, or a step file has no manifest yet: a checkpoint is being written."""
    try:
        names = {p.name for p in ckpt_dir.iterdir()}
    except OSError:
        return False
    if any(n.startswith(".tmp-") for n in names):
        return True
    return any(n.endswith(".pt") and n.startswith("step-") and n[:-3] + ".json" not in names for n in names)


# A train.step_fn that computes exactly the default step, but marks validation with a file (and makes
# each validation batch take 5 ms) so that kills can be aimed into validation.
VALIDATION_MARKER_STEP = """
import pathlib, time
from taktstock.training.step import default_step

MARKER = pathlib.Path("validating")


def step(model, batch, loss_fn):
    if model.training:
        MARKER.unlink(missing_ok=True)
    else:
        MARKER.touch()
        time.sleep(0.005)
    return default_step(model, batch, loss_fn)
"""


@dataclass
class KillStats:
    kills: int = 0
    in_write: int = 0
    in_validation: int = 0
    resumes: int = 0
    points: list[str] = field(default_factory=list)


def wait_until(predicate: Any, child: Child, timeout: float) -> bool:
    """Poll `predicate` every 2 ms until true; False if the child exited first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if child.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def kill_and_resume(
    server: ForkServer,
    cwd: Path,
    config: Path,
    run_dir: Path,
    kills: int,
    rng: random.Random,
    total_lines: int,
    env: dict[str, str] | None = None,
    in_write_fraction: float = 0.0,
    write_window: float = 0.0,
    val_marker: Path | None = None,
    in_val_fraction: float = 0.0,
    timeout: float = 120,
) -> KillStats:
    """Train into `run_dir`, SIGKILL it `kills` times at random points, resuming each time; then finish.

    Kill points: after a random number of metrics.jsonl lines (a random point of the run, taken from
    the uninterrupted run's `total_lines`) plus a random sub-step delay, or - with probability
    `in_write_fraction` - at a random moment within `write_window` seconds after a checkpoint write began,
    or - with probability `in_val_fraction` - during validation, which the run's step function signals
    by keeping the file `val_marker` while it evaluates (see VALIDATION_MARKER_STEP).
    """
    stats = KillStats()
    log_dir = cwd / "logs"
    log_dir.mkdir(exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    n = 0
    while True:
        n += 1
        # A kill before the run directory was set up leaves nothing to resume: start again, as a user would.
        resumable = (run_dir / "config.yaml").exists()
        args = ["train", "--resume", str(run_dir)] if resumable else ["train", str(config), "--run-dir", str(run_dir)]
        stats.resumes += resumable
        if val_marker is not None:
            val_marker.unlink(missing_ok=True)
        child = server.start(args, cwd, log_dir / f"{run_dir.name}-{n}.log", env)
        if stats.kills >= kills:
            rc = child.wait(timeout)
            if rc != 0:
                raise AssertionError(f"final resume failed ({rc}):\n{child.output()}")
            return stats
        start_lines = count_lines(metrics) if resumable else 0
        # Spread the remaining kills over the rest of the run (on average), so all of them land before it ends.
        span = max(1, 2 * (total_lines - 1 - start_lines) // (kills - stats.kills + 1))
        target = min(rng.randint(start_lines, start_lines + span), max(start_lines, total_lines - 1))
        mode = rng.random()
        if val_marker is not None and mode >= 1 - in_val_fraction:
            point = f"validation after line {target}"
            hit = wait_until(lambda: count_lines(metrics) >= target, child, timeout)
            hit = hit and wait_until(val_marker.exists, child, timeout)
            if hit:
                time.sleep(rng.random() * 0.02)
        elif mode < in_write_fraction:
            # Past a random point (at least one new metrics line, so leftovers of the previous kill do not
            # count), then into the next checkpoint write, then a random moment inside it.
            point = f"write after line {target}"
            hit = wait_until(lambda: count_lines(metrics) >= max(target, start_lines + 1), child, timeout)
            hit = hit and wait_until(lambda: checkpoint_write_in_progress(run_dir / "checkpoints"), child, timeout)
            if hit:
                time.sleep(rng.random() * write_window)
        else:
            point = f"line {target}"
            hit = wait_until(lambda: count_lines(metrics) >= target, child, timeout)
            if hit:
                time.sleep(rng.random() * 0.004)
        if hit and child.poll() is None:
            in_write = checkpoint_write_in_progress(run_dir / "checkpoints")
            in_val = val_marker is not None and val_marker.exists()
            child.kill_group()
            rc = child.wait(timeout)
            if rc == -signal.SIGKILL:
                stats.kills += 1
                stats.in_write += in_write
                stats.in_validation += in_val
                stats.points.append(
                    point + (" (inside a checkpoint write)" if in_write else "") + (" (during validation)" if in_val else "")
                )
                continue
        rc = child.wait(timeout)
        if rc != 0 and rc != -signal.SIGKILL:
            raise AssertionError(f"run exited with {rc}:\n{child.output()}")
        if rc == 0:
            # Finished before the kill landed: start over from its own end is pointless, so restart the
            # kill sequence on a fresh run only if no kill has happened yet; otherwise we are done.
            return stats
