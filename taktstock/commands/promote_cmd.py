"""`taktstock promote`."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(promote)


def promote(run_dir: Annotated[str, typer.Argument(help="Run directory written by train, or its URL (s3://...).")]) -> None:
    """Register the run's best model in MLflow; it becomes `champion` only if its test metric beats the current one."""
    from taktstock.utils.imports import optional_import

    optional_import("mlflow", "mlflow", "taktstock promote")  # the model registry is MLflow's
    from taktstock.pipelines.promote import promote as run_promote
    from taktstock.remote.location import opened_run

    with opened_run(run_dir) as local:
        r = run_promote(local)
    if r.already_champion:  # a re-run of promote on the champion's own weights changes nothing
        print(f"{r.model} version {r.version}: {r.metric} = {r.value:.6g} -> already the champion (same weights), unchanged")
        return
    before = "no champion yet" if r.champion_value is None else f"champion {r.champion_value:.6g}"
    verdict = "promoted to champion" if r.promoted else "kept as challenger (not better)"
    print(f"{r.model} version {r.version}: {r.metric} = {r.value:.6g} ({before}) -> {verdict}")
