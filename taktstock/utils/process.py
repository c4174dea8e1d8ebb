"""Identify a process well enough to tell later whether it is still running (pids get reused)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), or None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses, so split after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def this_process() -> dict[str, Any]:
    """{"host", "pid", "start"} of the calling process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def is_alive(process: dict[str, Any]) -> bool | None:
    """True/False for a process recorded by `this_process` on this host; None when it cannot be told (another host)."""
    if process.get("host") != socket.gethostname() or not isinstance(process.get("pid"), int):
        return None
    pid = process["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    recorded, now = process.get("start"), _start_ticks(pid)
    return recorded is None or now is None or recorded == now  # a different start time: the pid was reused
