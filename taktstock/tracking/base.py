"""The tracker interface and a fail-soft fan-out.

The training loop only talks to `TrackerGroup`; adding a backend means adding a `Tracker`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """A metrics/artifacts backend. `state` is what a backend needs to continue the same run on resume."""

    name: str

    def start(self, config: dict[str, Any], resume_state: dict[str, Any] | None, step: int) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def finish(self, status: str) -> None: ...


class TrackerGroup:
    """Calls every tracker; a backend that fails mid-run is reported once and then skipped.

    metrics.jsonl is written by the trainer itself before any tracker, so it stays complete.
    """

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.failed: set[str] = set()

    def _call(self, method: str, *args: Any) -> None:
        for t in self.trackers:
            if t.name in self.failed:
                continue
            try:
                getattr(t, method)(*args)
            except Exception as exc:
                self.failed.add(t.name)
                print(f"warning: tracker '{t.name}' failed ({type(exc).__name__}: {exc}); training continues without it", file=sys.stderr)

    def start(self, config: dict[str, Any], resume_state: dict[str, Any] | None, step: int) -> None:
        # Start-up errors propagate: an unreachable server is a configuration problem (see logging.fail_soft).
        for t in self.trackers:
            t.start(config, (resume_state or {}).get(t.name), step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def log_artifact(self, path: Path) -> None:
        self._call("log_artifact", path)

    def call(self, method: str, *args: Any) -> None:
        """Invoke an optional hook (e.g. log_histograms) on the trackers that have it."""
        for t in self.trackers:
            if hasattr(t, method) and t.name not in self.failed:
                try:
                    getattr(t, method)(*args)
                except Exception as exc:
                    self.failed.add(t.name)
                    print(f"warning: tracker '{t.name}' failed ({exc}); training continues without it", file=sys.stderr)

    def state(self) -> dict[str, Any]:
        return {t.name: t.state() for t in self.trackers}

    def finish(self, status: str) -> None:
        self._call("finish", status)
