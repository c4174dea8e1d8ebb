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


def _conventional_help() -> None:
    """Help text as CLI users read it: `--force` without `<bool>` (it takes no value), `RUN_DIR` not `{run_dir}`.

    typer 0.29 prints a type label for every option, flags included, and braces around required
    arguments in the usage line; both read as if a value or literal braces were expected.
    """
    from typer.core import TyperArgument, TyperOption

    option_type = TyperOption.display_type_rich

    def flag_without_type(self: TyperOption, ctx: typer.Context) -> str | None:  # type: ignore[name-defined]
        return None if self.is_flag and not self.count else option_type(self, ctx)

    def usage_name(self: TyperArgument) -> str:
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperOption.display_type_rich = flag_without_type  # type: ignore[method-assign]
    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


def _register() -> None:
    from taktstock.commands import (
        config_cmd,
        evaluate_cmd,
        export_cmd,
        generate_cmd,
        models_cmd,
        new_cmd,
        pipeline_cmd,
        predict_cmd,
        prepare_cmd,
        promote_cmd,
        runs_cmd,
        submit_cmd,
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
        models_cmd,
        submit_cmd,
    )
    for module in modules:
        module.register(app)


def main() -> None:
    """Entry point: user errors print one short message and exit with code 2."""
    _conventional_help()
    _register()
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
