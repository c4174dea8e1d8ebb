"""A one-node SLURM cluster on this machine for tests: munged, slurmctld and slurmd with a generated
slurm.conf, every path (key, socket, state, spool, logs, pid files) in a temporary directory.

Needs Debian's `slurm-wlm` and `munge` packages and root (slurmd starts jobs as their user). Every
daemon is stopped by the PID it wrote, and `stop()` checks that none is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


# The daemons live in sbin, which a non-login PATH may lack.
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue") if shutil.which(b, path=PATH) is None]
    if absent:
        return f"SLURM/munge binaries missing ({', '.join(absent)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd runs jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def start(self, timeout: float = 60) -> SlurmCluster:
        r = self.root
        for d in ("state", "spool", "log", "run", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = r / "munge" / "munge.socket"
        self._spawn(
            "munged",
            ["munged", f"--socket={sock}", f"--key-file={key}", f"--pid-file={r / 'run/munged.pid'}",
             f"--log-file={r / 'log/munged.log'}", f"--seed-file={r / 'munge/seed'}", "--force", "--foreground"],
            r / "run/munged.pid",
        )  # fmt: skip
        host = socket.gethostname()
        cpus = os.cpu_count() or 1
        ctld, slurmd = _free_port(), _free_port()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=taktstock-test",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={ctld}",
                    f"SlurmdPort={slurmd}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={sock}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'run/slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'run/slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log/slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log/slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "ReturnToService=2",
                    "MinJobAge=10",
                    "KillWait=5",
                    # Requeued jobs wait (BeginTime) unless released; the scheduler looks at the queue often.
                    "SchedulerParameters=sched_interval=1",
                    "MessageTimeout=10",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MpiDefault=none",
                    "SwitchType=switch/none",
                    f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN",
                    f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=PATH)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], r / "run/slurmctld.pid")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)], r / "run/slurmd.pid")
        self.wait_idle(timeout)
        return self

    def _spawn(self, name: str, argv: list[str], pid_file: Path, timeout: float = 20) -> None:
        """Start a daemon in the foreground as our child (so it is reaped when stopped) and wait for its pid file."""
        log = (self.root / "log" / f"{name}.out").open("w")
        env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=PATH)
        proc = subprocess.Popen([shutil.which(argv[0], path=PATH) or argv[0], *argv[1:]], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start ({proc.returncode})\n{self.logs()}")
            if pid_file.is_file() and pid_file.read_text().strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} wrote no pid file {pid_file}\n{self.logs()}")

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the SLURM node did not become idle within {timeout:.0f}s (state {state!r})\n{self.logs()}")

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key -> value (empty once the job is gone)."""
        proc = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        if proc.returncode != 0:
            return {}
        return dict(part.split("=", 1) for part in proc.stdout.split() if "=" in part)

    def logs(self) -> str:
        out = []
        for name in DAEMONS:
            path = self.root / "log" / f"{name}.log"
            if path.is_file():
                out.append(f"--- {name}.log (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM each daemon by its PID (slurmd and slurmctld first), wait for it, SIGKILL one that does not exit."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def running_daemons(conf: Path) -> list[str]:
    """This cluster's SLURM/munge processes still alive (each is started with SLURM_CONF=conf in its environment
    and slurmstepd inherits it from slurmd; zombies, already dead, are not counted)."""
    marker = f"SLURM_CONF={conf}".encode()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split(" (", 1)[1].rsplit(")", 1)
            if name not in (*DAEMONS, "slurmstepd") or rest.split()[0] == "Z":
                continue
            if marker in (stat.parent / "environ").read_bytes().split(b"\0"):
                found.append(f"{stat.parent.name} {name}")
        except (OSError, ValueError):
            continue
    return found
