"""`taktstock config show|schema|docs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from taktstock.commands.common import split_config_args

config_app = typer.Typer(help="Show the resolved config, its JSON Schema, or the generated reference.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command()
def show(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
    sources: Annotated[
        bool, typer.Option("--sources", help="One line per key: value and where it came from (a file, 'override' or 'default').")
    ] = False,
) -> None:
    """Print the fully resolved config (defaults filled in, `extends:` bases merged, overrides applied)."""
    from taktstock.config import config_to_yaml
    from taktstock.config.loader import load_config_with_sources

    config_path, overrides = split_config_args(args)
    config, origin = load_config_with_sources(config_path, overrides)
    if not sources:
        print(config_to_yaml(config), end="")
        return
    import json

    from taktstock.config.loader import config_to_dict

    rows = [(k, json.dumps(v), origin[k]) for k, v in _leaves(config_to_dict(config))]
    width = max(len(k) + len(v) for k, v, _ in rows) + 3
    for key, value, where in rows:
        print(f"{key}: {value}".ljust(width) + f"# {where}")


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


def _leaves(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf; lists stay values (the same keys as flatten_dict)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.extend(_leaves(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out
