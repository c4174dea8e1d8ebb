"""`taktstock config show|schema|docs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taktstock.commands.common import split_config_args

config_app = typer.Typer(help="Show the resolved config, its JSON Schema, or the generated reference.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command()
def show(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
) -> None:
    """Print the fully resolved config (defaults filled in, overrides applied)."""
    from taktstock.config import config_to_yaml, load_config

    config_path, overrides = split_config_args(args)
    print(config_to_yaml(load_config(config_path, overrides)), end="")


@config_app.command()
def schema() -> None:
    """Print the JSON Schema of experiment files (for editors / YAML language server)."""
    import json

    from taktstock.config.reference import json_schema

    print(json.dumps(json_schema(), indent=2))


@config_app.command()
def docs(out: Annotated[Path | None, typer.Option(help="Write to this file instead of printing.")] = None) -> None:
    """Print the config reference (every key with type, default and description) as Markdown."""
    from taktstock.config.reference import markdown_reference

    text = markdown_reference()
    if out:
        out.write_text(text)
    else:
        print(text, end="")
