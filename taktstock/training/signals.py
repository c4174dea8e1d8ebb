"""Preemption: SIGTERM/SIGINT/SIGUSR1 only set a flag; the loop checkpoints at the next step boundary.

SIGUSR1 is what SLURM sends ahead of a time limit or preemption (`--signal=USR1@secs`, see
pipelines/slurm.py); the run then exits with 128 + 10 and the batch script requeues the job.

Checkpointing inside a signal handler can deadlock (locks held by the interrupted code), so the
handler does nothing but record the request. A second SIGINT exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType
from typing import Any

# SIGUSR1 does not exist on Windows.
PREEMPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


# SIGUSR1 received before the training loop installed its handler (see defer_early_usr1).
_early: list[str] = []


def defer_early_usr1() -> None:
    """Remember a SIGUSR1 that arrives while the run starts up, instead of dying of it.

    SLURM may send its time-limit warning up to a minute early, so with short limits it can land during
    imports or data preparation; the training loop then checkpoints after its first step and exits 138.
    Called by `taktstock train` first thing (main thread only; elsewhere a no-op).
    """
    if hasattr(signal, "SIGUSR1"):
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGUSR1, lambda signum, frame: _early.append("SIGUSR1"))


class PreemptionHandler:
    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        self._pid = os.getpid()
        for sig in PREEMPT_SIGNALS:
            # Outside the main thread (e.g. a tuning worker thread) signal handlers cannot be installed.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        if _early and self.requested is None:
            self.requested = _early.pop()
            os.write(2, b"SIGUSR1 received during start-up: stopping after the first step and saving a checkpoint\n")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked DataLoader worker inherited this handler: the main process decides and shuts workers down.
            return
        name = signal.Signals(signum).name
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            os.write(2, b"\nsecond SIGINT: exiting immediately\n")
            os._exit(130)
        self.requested = name
        os.write(2, f"\n{name} received: stopping after the current step and saving a checkpoint\n".encode())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def exit_code_for(signal_name: str) -> int:
    return 128 + int(getattr(signal, signal_name))
