"""metrics.jsonl: one JSON object per logged point; the complete, local record of a run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


class MetricsFile:
    """Append-only metrics log whose length is recorded in checkpoints.

    On resume the file is cut back to the length it had at the checkpoint, so lines written
    after it (and redone by the resumed run) appear exactly once.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f: Any = None

    def open(self, truncate_to: int | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "r+b" if self.path.exists() else "w+b"
        self._f = open(self.path, mode)  # noqa: SIM115 - kept open for the run
        size = self._f.seek(0, os.SEEK_END)
        if truncate_to is not None and truncate_to > size:
            # Lost with the page cache (power loss): never pad with zero bytes; keep what survived.
            print(f"warning: {self.path} is shorter than at the checkpoint ({size} < {truncate_to} bytes)", file=sys.stderr)
            truncate_to = size
        self._f.truncate(truncate_to or 0)
        self._f.seek(0, os.SEEK_END)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write((json.dumps(record) + "\n").encode())
        self._f.flush()

    def offset(self) -> int:
        """Length of the log, made durable first: a checkpoint must never point past what is on disk."""
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
