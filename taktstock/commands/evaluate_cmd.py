"""`taktstock evaluate`."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(evaluate)


def evaluate(
    run_dir: Annotated[str, typer.Argument(help="Run directory written by train, or its URL (s3://...).")],
    checkpoint: Annotated[str, typer.Option(help="Weights to evaluate: best or last.")] = "best",
    split: Annotated[str, typer.Option(help="Split: test, val or train.")] = "test",
    weights: Annotated[str | None, typer.Option(help="train.ema runs: ema (default) or raw weights.")] = None,
) -> None:
    """Evaluate a trained run; writes RUN_DIR/eval/metrics.json, report.json and confusion_matrix.png."""
    from taktstock.evaluation.evaluate import evaluate as run_evaluate
    from taktstock.remote.location import opened_run

    with opened_run(run_dir, write_back=("eval",)) as local:
        run_evaluate(local, checkpoint=checkpoint, split=split, weights=weights)
