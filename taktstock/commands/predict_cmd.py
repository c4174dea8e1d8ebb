"""`taktstock predict`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(predict)


def predict(
    run_dir: Annotated[str, typer.Argument(help="Run directory written by train, or its URL (s3://...).")],
    input: Annotated[
        Path,
        typer.Argument(
            help="Raw inputs: a CSV (columns matched by feature name), a Parquet/TSV table (table runs), an NPZ with array 'x', "
            "image files (a file or folder), or for a text run a .txt (one text per line) or a JSONL/CSV/Parquet with the training text field."
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Write predictions to this CSV (default: print).")] = None,
    checkpoint: Annotated[str, typer.Option(help="Weights: best or last.")] = "best",
    weights: Annotated[str | None, typer.Option(help="train.ema runs: ema (default) or raw weights.")] = None,
) -> None:
    """Batch inference with the run's training-time preprocessing; writes class and probabilities (or value)."""
    from taktstock.deploy.predict import predict as run_predict
    from taktstock.deploy.predict import to_csv
    from taktstock.remote.location import opened_run

    with opened_run(run_dir) as local:
        header, rows = run_predict(local, input, checkpoint, weights=weights)
    text = to_csv(header, rows)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
