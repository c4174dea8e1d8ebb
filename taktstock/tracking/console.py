"""Console output: a progress bar on a terminal, plain progress lines in batch-job logs, the end-of-run summary table."""

from __future__ import annotations

import sys
import time
from typing import Any


class ConsoleProgress:
    """What training prints while it runs.

    mode auto: a rich progress bar on a terminal; without one (a batch job's log file) one plain line
    per validation and one every `every_minutes` of training, each with step, epoch, metrics,
    throughput and ETA. on: the bar even without a terminal. off: nothing.
    """

    def __init__(
        self, mode: str, total_steps: int, enabled_rank: bool = True, every_minutes: float = 5.0, epochs: int | None = None
    ) -> None:
        tty = sys.stdout.isatty()
        self.enabled = enabled_rank and (mode == "on" or (mode == "auto" and tty))
        self.plain = enabled_rank and mode == "auto" and not tty
        self.every_s = every_minutes * 60
        self.epochs = epochs
        self._progress: Any = None
        self._task: Any = None
        self.total = total_steps
        self._start_step = 0
        self._t_start = self._t_line = 0.0
        self._last_train: dict[str, float] = {}

    def start(self, completed: int) -> None:
        self._start_step, self._t_start = completed, time.monotonic()
        self._t_line = self._t_start
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total, completed=completed, info="")

    def update(self, step: int, info: str | None = None, record: dict[str, float] | None = None, epoch: int = 0, rate: str = "") -> None:
        """After a logged training interval: the bar moves; a plain line is due every `every_minutes`."""
        if self._progress is not None:
            fields = {"info": info} if info is not None else {}
            self._progress.update(self._task, completed=step, **fields)
        if record:
            self._last_train = {k: v for k, v in record.items() if k.startswith("train/") and k.endswith(("loss_step", "acc_step"))}
        if self.plain and time.monotonic() - self._t_line >= self.every_s:
            self._line("train", step, epoch, self._last_train, rate)

    def validation(self, step: int, epoch: int, metrics: dict[str, float], rate: str = "") -> None:
        """After a validation: one plain line (off a terminal)."""
        if self.plain:
            self._line("val", step, epoch, self._last_train | metrics, rate)

    def _line(self, kind: str, step: int, epoch: int, metrics: dict[str, float], rate: str) -> None:
        self._t_line = now = time.monotonic()
        pct = f" ({100 * step / self.total:.0f}%)" if self.total else ""
        ep = f"{epoch + 1}/{self.epochs}" if self.epochs else str(epoch + 1)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("train/lr"))
        done = step - self._start_step
        eta = format_duration((self.total - step) * (now - self._t_start) / done) if done > 0 and self.total >= step else "?"
        parts = [
            f"[{kind}] step {step}/{self.total}{pct}",
            f"epoch {ep}",
            shown,
            rate,
            f"elapsed {format_duration(now - self._t_start)}",
            f"ETA {eta}",
        ]
        print("  ".join(p for p in parts if p), flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def format_duration(seconds: float) -> str:
    """12.3 -> '0:00:12'; hours grow without a day field (a long run reads '27:03:10')."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


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
