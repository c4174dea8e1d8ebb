"""Where a run came from: git commit, dirty flag, host, taktstock version (recorded as tracker tags)."""

from __future__ import annotations

import socket
import subprocess

import taktstock


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def provenance() -> dict[str, str]:
    """Tags describing the code and machine of the current process (git keys only inside a git checkout)."""
    tags = {"taktstock.version": taktstock.__version__, "host": socket.gethostname()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        # Tracked files only: untracked scratch files do not make the code differ from the commit.
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower()
    return tags
