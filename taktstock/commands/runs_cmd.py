"""`taktstock runs` and `taktstock compare`: local run directories, listed and side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command()(runs)
    app.command()(compare)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runs(
    directory: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("experiments/runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List runs: name, status, monitored metric, best value, steps, duration (from each run.json)."""
    from taktstock.tracking.runs import format_duration, list_runs

    rows = list_runs(directory)
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no runs under {directory}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {directory}")
    for col in ("run", "status", "monitor", "best", "steps", "duration"):
        table.add_column(col, justify="right" if col in ("best", "steps", "duration") else "left", overflow="fold")
    for r in rows:
        table.add_row(r["run"], r["status"], r["monitor"], _fmt(r["best"]), _fmt(r["steps"]), format_duration(r["duration_s"]))
    Console(width=140).print(table)


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.", show_default=False)],
    metric: Annotated[str | None, typer.Option(help="Metric for the overlaid curve (default: the first run's monitored metric).")] = None,
    out: Annotated[Path | None, typer.Option(help="PNG of the overlaid learning curves (default compare-<metric>.png).")] = None,
) -> None:
    """Config differences and final metrics side by side, plus an overlaid learning-curve PNG."""
    from rich.console import Console
    from rich.table import Table

    from taktstock.tracking.runs import compare_runs

    result = compare_runs(run_dirs, metric, out)
    console = Console(width=160)
    if result.config_diff:
        table = Table(title="config differences")
        table.add_column("key")
        for label in result.labels:
            table.add_column(label, overflow="fold")
        for key, values in result.config_diff.items():
            table.add_row(key, *(_fmt(v) for v in values))
        console.print(table)
    else:
        console.print("configs are identical")
    table = Table(title="final metrics")
    table.add_column("metric")
    for label in result.labels:
        table.add_column(label, justify="right", overflow="fold")
    for name, values in result.metrics.items():
        table.add_row(name, *(_fmt(v) for v in values))
    console.print(table)
    print(f"learning curves ({result.metric}): {result.plot}")
