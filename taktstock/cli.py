"""The `taktstock` command line. Commands live in taktstock/commands/; heavy imports happen inside them."""

from __future__ import annotations

import sys

import typer

from taktstock.errors import UserError

app = typer.Typer(
    help="taktstock: config-driven PyTorch training. One YAML file describes an experiment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from taktstock.commands import (
        config_cmd,
        evaluate_cmd,
        export_cmd,
        generate_cmd,
        new_cmd,
        pipeline_cmd,
        predict_cmd,
        prepare_cmd,
        promote_cmd,
        runs_cmd,
        train_cmd,
        tune_cmd,
    )

    modules = (
        train_cmd,
        evaluate_cmd,
        prepare_cmd,
        config_cmd,
        runs_cmd,
        tune_cmd,
        new_cmd,
        pipeline_cmd,
        promote_cmd,
        export_cmd,
        predict_cmd,
        generate_cmd,
    )
    for module in modules:
        module.register(app)


def main() -> None:
    """Entry point: user errors print one short message and exit with code 2."""
    _register()
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
