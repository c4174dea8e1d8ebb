"""Console output: a progress bar (only on a terminal) and the end-of-run summary table."""

from __future__ import annotations

import sys
from typing import Any


class ConsoleProgress:
    """rich progress bar showing loss and throughput; silent when stdout is not a terminal."""

    def __init__(self, mode: str, total_steps: int, enabled_rank: bool = True) -> None:
        self.enabled = enabled_rank and (mode == "on" or (mode == "auto" and sys.stdout.isatty()))
        self._progress: Any = None
        self._task: Any = None
        self.total = total_steps

    def start(self, completed: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total, completed=completed, info="")

    def update(self, step: int, info: str | None = None) -> None:
        if self._progress is not None:
            fields = {"info": info} if info is not None else {}
            self._progress.update(self._task, completed=step, **fields)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def print_table(title: str, values: dict[str, Any]) -> None:
    """A two-column table of names and values."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in values.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console(width=100).print(table)
