"""`taktstock train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from taktstock.commands.common import split_config_args


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(train)


def train(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default experiments/runs/<name>-<time>).")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the run in this directory from its newest valid checkpoint.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the config changed in ways that break exactness.")] = False,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Evaluate the best model on the test split afterwards.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print config, model summary and batch shapes; do not train.")] = False,
) -> None:
    """Train an experiment: taktstock train config.yaml train.epochs=5 optim.lr=3e-4"""
    from taktstock.errors import TrainingAborted
    from taktstock.training.trainer import Preempted

    config_path, overrides = split_config_args(args)
    if dry_run:
        from taktstock.training.dry_run import dry_run as do_dry_run

        do_dry_run(config_path, overrides)
        return
    from taktstock.training.run import train as run_train

    try:
        result = run_train(config_path, overrides, run_dir=run_dir, resume=resume, force=force)
    except Preempted as exc:
        from taktstock.training.signals import exit_code_for

        sys.exit(exit_code_for(exc.signal_name))
    except TrainingAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if evaluate:
        from taktstock.config import load_config
        from taktstock.evaluation.evaluate import evaluate as run_evaluate

        data = load_config(result.run_dir / "config.yaml").data
        # Without a test split (data.test_fraction: 0) the held-out validation split is evaluated.
        split = "test" if data.test_fraction > 0 else "val" if data.val_fraction > 0 else None
        if split is None:
            print("note: --evaluate skipped: no test or validation split (data.test_fraction and data.val_fraction are 0)", file=sys.stderr)
        else:
            run_evaluate(result.run_dir, split=split)
    print(f"run directory: {result.run_dir}")
