"""Kill-and-resume harness shared by tests/test_resume_kill.py, tests/test_checkpoint_safety.py and scripts/kill_soak.py.

Starting `python -m taktstock` costs seconds (torch, scikit-learn, torchmetrics imports), which would
dominate a test that kills and restarts training dozens of times. A *fork server* pays that once:
a fresh interpreter imports taktstock and its heavy dependencies without running any tensor op,
then forks one child per `taktstock ...` command. Each child is a real OS process running the real
CLI (`taktstock.cli.main`) that we SIGKILL/SIGTERM/SIGINT like any other; the server only reaps it
and reports its exit code. Children never share state with each other: each is a fresh fork of the
pristine server.

`TAKTSTOCK_TEST_SUBPROCESS=1` (or `ForkServer(fresh=True)`) starts every command as a real
`python -m taktstock` instead, with the same interface; `reference_server()` does so by default, so the
uninterrupted reference run of a kill test starts from a fresh interpreter (its own hash seed, imports and
RNG draws) while the killed and resumed side forks: a resume that depended on the pre-imported state would
not match it.

A resumed child must say where it continued: `assert_resumed_from` checks its `resuming ... (step N, ...)`
line against the newest valid checkpoint on disk at kill time (taktstock's own listing and hash check), so a
resume that silently restarted from step 0 - and, training being deterministic, still ended bit-identical -
fails.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taktstock.checkpoint.manager import CheckpointInfo

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
    """Runs `taktstock ARGS` in forked children of one pre-imported interpreter (see module docstring).

    `fresh=True` (default: TAKTSTOCK_TEST_SUBPROCESS=1) runs each command in a new interpreter instead."""

    def __init__(self, start_timeout: float = 120.0, fresh: bool | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.env = env
        self.fresh = os.environ.get("TAKTSTOCK_TEST_SUBPROCESS") == "1" if fresh is None else fresh
        self.proc: subprocess.Popen[str] | None = None
        if self.fresh:
            return
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1
        )
        self._read(start_timeout)  # {"ready": pid}

    def alive(self) -> bool:
        return self.fresh or (self.proc is not None and self.proc.poll() is None)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
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
        if self.fresh:
            return self._start_fresh(args, cwd, log, env, err, replace_env)
        assert self.proc is not None and self.proc.stdin is not None
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

    def _start_fresh(self, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None, err: Path | None, replace_env: bool) -> Child:
        """`python -m taktstock ARGS` in a new session (its own process group, as a forked child has)."""
        full = dict(env or {}) if replace_env else self.env | (env or {})
        full.setdefault("PYTHONUNBUFFERED", "1")  # as the forked child's line-buffered streams: a log read mid-run is current
        with contextlib.ExitStack() as files:
            out: IO[bytes] = files.enter_context(open(log, "wb"))
            errors: IO[bytes] | int = files.enter_context(open(err, "wb")) if err else subprocess.STDOUT
            popen = subprocess.Popen(
                [sys.executable, "-m", "taktstock", *args],
                cwd=cwd,
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=errors,
                start_new_session=True,
            )
        return Child(self, popen.pid, log, popen=popen)

    def run(self, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 120) -> int:
        return self.start(args, cwd, log, env).wait(timeout)

    def close(self) -> None:
        """Stop the idle server (it holds no state worth a graceful exit)."""
        if self.proc is None:
            return
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
    if _shared is None or not _shared.alive():
        _shared = ForkServer()
        atexit.register(_shared.close)
    return _shared


def reference_server() -> ForkServer:
    """Runs each command in a fresh interpreter: for the uninterrupted reference run of a kill test, whose other
    side (killed and resumed) forks from the pre-imported server - so a result that depends on what that server
    imported, seeded or set (hash seed, Python's RNG drawn by imports, torch's global flags) shows as a mismatch."""
    return ForkServer(fresh=True)


@dataclass
class Child:
    server: ForkServer
    pid: int
    log: Path
    rc: int | None = None
    popen: subprocess.Popen[bytes] | None = None  # a fresh interpreter (ForkServer(fresh=True)); else a fork of the server

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
        if self.rc is None and self.popen is not None:
            self.rc = self.popen.poll()
        elif self.rc is None:
            ready, _, _ = select.select([self.server.proc.stdout], [], [], 0)
            if ready:
                self.rc = self.server._read(1)["rc"]
        return self.rc

    def wait(self, timeout: float = 120) -> int:
        if self.rc is None and self.popen is not None:
            try:
                self.rc = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.rc = self.popen.wait(30)
                raise TimeoutError(f"taktstock run {self.pid} did not finish within {timeout:.0f}s:\n{self.output()}") from None
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


# What `train --resume` prints (taktstock/training/run.py and checkpoint/checkpointer.py): where it continued, or
# that it found nothing to continue from.
RESUMED = re.compile(r"^resuming (?P<root>.+) from (?P<name>\S+) \(step (?P<step>\d+), epoch (?P<epoch>\d+)\)$", re.M)
NO_CHECKPOINT = re.compile(r"^no valid checkpoint in (?P<dir>.+): starting (?P<root>.+) from the beginning$", re.M)


def newest_valid_checkpoint(run_dir: Path) -> CheckpointInfo | None:
    """The checkpoint `train --resume run_dir` must continue from, as the files are now: taktstock's own listing and
    hash check (CheckpointManager.latest_valid; its warnings about damaged files are not this process's output)."""
    from taktstock.checkpoint.manager import CheckpointManager

    with contextlib.redirect_stderr(io.StringIO()):
        return CheckpointManager(Path(run_dir) / "checkpoints").latest_valid()


def resume_announced(output: str) -> bool:
    """The run's output says where it continued (or that it had nothing to continue from)."""
    return bool(RESUMED.search(output) or NO_CHECKPOINT.search(output))


def assert_resumed_from(output: str, expected: CheckpointInfo | None) -> int | None:
    """The resumed run's output says it continued from `expected` (its file and step), or - only when `expected`
    is None - that it found no valid checkpoint and started from the beginning. Returns the step (or None)."""
    resumed, fresh = RESUMED.findall(output), NO_CHECKPOINT.search(output)
    if expected is None:
        assert fresh and not resumed, f"no valid checkpoint existed, but the run did not say it started over:\n{output[-3000:]}"
        return None
    assert not fresh, f"expected to resume from {expected.path.name} (step {expected.step}), but the run started over:\n{output[-3000:]}"
    assert len(resumed) == 1, f"expected one 'resuming ... from {expected.path.name}' line:\n{output[-3000:]}"
    _, name, step, _ = resumed[0]
    assert (name, int(step)) == (expected.path.name, expected.step), (
        f"resumed from {name} (step {step}), but the newest valid checkpoint was {expected.path.name} (step {expected.step})"
    )
    return expected.step


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
    resumes: int = 0  # `train --resume` invocations
    resumed_from: list[int | None] = field(default_factory=list)  # the step each one continued from (None: started over)
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

    Each resumed run must announce the newest valid checkpoint at the time of the kill (assert_resumed_from), and
    no kill lands before it has done so: a kill during interpreter start-up or while loading the checkpoint would
    test nothing. Kill points: after a random number of metrics.jsonl lines (a random point of the run, taken from
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
        expected = newest_valid_checkpoint(run_dir) if resumable else None
        if val_marker is not None:
            val_marker.unlink(missing_ok=True)
        child = server.start(args, cwd, log_dir / f"{run_dir.name}-{n}.log", env)
        if resumable:
            wait_until(lambda: resume_announced(child.output()), child, timeout)
            try:
                stats.resumed_from.append(assert_resumed_from(child.output(), expected))
            except AssertionError:
                child.kill_group()
                child.wait(timeout)
                raise
        if stats.kills >= kills:
            rc = child.wait(timeout)
            if rc != 0:
                raise AssertionError(f"final resume failed ({rc}):\n{child.output()}")
            return stats
        # Read after the resume line: by then the run has cut metrics.jsonl back to its checkpoint.
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
