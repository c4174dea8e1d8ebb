"""Atomic, durable file writes: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview, before_replace: Callable[[], None] | None = None) -> None:
    """Replace `path` with `data` so that readers see either the old or the new file, never a mix.

    On any error the temporary file is removed and the previous file is left untouched.
    `before_replace` runs between the durable write and the rename (a fault-injection point for tests).
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if before_replace is not None:
                before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files left by a process killed mid-write."""
    removed = []
    if directory.is_dir():
        for p in directory.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
