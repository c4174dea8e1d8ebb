"""`taktstock new`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(new)


def new(
    directory: Annotated[Path, typer.Argument(help="Directory of the new project (created; must be empty).", show_default=False)],
    example: Annotated[str, typer.Option("--example", help="Working example to start from: tabular, image or regression.")] = "tabular",
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory, overwriting files of the same name.")] = False,
) -> None:
    """Create a project: your data, models, experiments and tests, with a working example that trains at once."""
    from taktstock.scaffold import create_project

    files = create_project(directory, example=example, force=force)
    print(f"created {directory} ({example} example, {len(files)} files)")
    print("next steps:")
    print(f"  cd {directory}")
    print("  python train.py       # train with config.yaml")
    print("  python evaluate.py    # evaluate the newest run on the test split")
    print("  pytest                # the project's own tests")
