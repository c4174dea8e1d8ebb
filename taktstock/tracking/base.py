"""The tracker interface and a fail-soft fan-out.

The training loop only talks to `TrackerGroup`; adding a backend means adding a `Tracker`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Protocol

from taktstock.errors import UserError


class Tracker(Protocol):
    """A metrics/artifacts backend. `state` is what a backend needs to continue the same run on resume.

    Optional hooks, called when a backend defines them: `preflight()` (before the run directory is
    created; raise UserError when the backend is unreachable), `log_histograms(model, step)`,
    `log_text(name, text, step)` (logging.samples), and `log_run_outputs(run_dir, final_metrics)` (after final weights and plots are written).
    """

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

    def __init__(self, trackers: list[Tracker], fail_soft: bool = False) -> None:
        self.trackers = trackers
        self.fail_soft = fail_soft
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
        """Start every tracker. A backend that cannot start is a clear error (exit 2), or with
        logging.fail_soft a warning and a run without it."""
        started: list[Tracker] = []
        for t in self.trackers:
            try:
                t.start(config, (resume_state or {}).get(t.name), step)
                started.append(t)
            except Exception as exc:
                detail = str(exc) if isinstance(exc, UserError) else f"tracker '{t.name}' could not start ({type(exc).__name__}: {exc})"
                if not self.fail_soft:
                    for other in started:  # do not leave runs marked RUNNING on the servers
                        with contextlib.suppress(Exception):
                            other.finish("FAILED")
                    if isinstance(exc, UserError):
                        raise
                    raise UserError(f"{detail}; set logging.fail_soft: true to train without it") from exc
                self.failed.add(t.name)
                print(f"warning: {detail}; logging.fail_soft is set, training continues without '{t.name}'", file=sys.stderr)

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
                    print(
                        f"warning: tracker '{t.name}' failed ({type(exc).__name__}: {exc}); training continues without it", file=sys.stderr
                    )

    def state(self) -> dict[str, Any]:
        """Per-backend resume state (stored in checkpoints); kept even for a failed backend so resume can reattach."""
        out: dict[str, Any] = {}
        for t in self.trackers:
            try:
                out[t.name] = t.state()
            except Exception:
                out[t.name] = {}
        return out

    def finish(self, status: str) -> None:
        # A backend that failed earlier still gets a quiet, best-effort finish (e.g. the model upload
        # failed but the server is up: the run should not stay RUNNING).
        for t in self.trackers:
            if t.name in self.failed:
                with contextlib.suppress(Exception):
                    t.finish(status)
        self._call("finish", status)
