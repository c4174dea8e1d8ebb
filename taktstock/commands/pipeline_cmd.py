"""`taktstock pipeline dvc|airflow`: write a DVC pipeline or an Airflow DAG for an experiment."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

pipeline_app = typer.Typer(help="Generate DVC pipelines and Airflow DAGs (prepare -> train -> evaluate -> promote).", no_args_is_help=True)


_ARGS_HELP = "CONFIG file, then key.path=value overrides (the stages run with them)."
_INTERSPERSED = {"allow_interspersed_args": True}


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")


def _config_and_overrides(args: list[str]) -> tuple[Path, list[str]]:
    from taktstock.commands.common import split_config_args
    from taktstock.errors import UserError

    config, overrides = split_config_args(args)
    if config is None:
        raise UserError("a pipeline needs an experiment file first: taktstock pipeline dvc|airflow CONFIG [key=value ...]")
    return config, overrides


@pipeline_app.command(context_settings=_INTERSPERSED)
def dvc(
    args: Annotated[list[str], typer.Argument(help=_ARGS_HELP, show_default=False)],
    out: Annotated[str, typer.Option(help="dvc.yaml to write; '-' prints it. Stage paths are relative to its folder.")] = "dvc.yaml",
    python: Annotated[str, typer.Option(help="Interpreter the stages run (default: 'python' on PATH).")] = "python",
) -> None:
    """Write dvc.yaml with stages prepare -> train -> evaluate -> promote for CONFIG (run: dvc repro)."""
    from taktstock.pipelines.dvc import generate

    config, overrides = _config_and_overrides(args)
    project = Path.cwd() if out == "-" else Path(out).resolve().parent
    text = generate(config, project, python, overrides)
    if out == "-":
        sys.stdout.write(text)
        return
    Path(out).write_text(text)
    _ignore_bytecode(project)
    print(f"wrote {out} (run it with: dvc repro)")


def _ignore_bytecode(project: Path) -> None:
    """Code folders are stage dependencies; Python's bytecode caches in them must not count as changes."""
    path = project / ".dvcignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    missing = [p for p in ("__pycache__/", "*.pyc") if p not in lines]
    if missing:
        path.write_text("\n".join([*lines, *missing]) + "\n")


@pipeline_app.command(context_settings=_INTERSPERSED)
def airflow(
    args: Annotated[list[str], typer.Argument(help=_ARGS_HELP, show_default=False)],
    out: Annotated[Path, typer.Option(help="Airflow DAGs folder to write the DAG file into.")] = Path("dags"),
    project: Annotated[Path | None, typer.Option(help="Directory the tasks run in (default: the current directory).")] = None,
) -> None:
    """Write an Airflow DAG taktstock_<name> (prepare -> train -> evaluate -> promote) into the DAGs folder."""
    from taktstock.errors import UserError
    from taktstock.pipelines.airflow import generate

    config, overrides = _config_and_overrides(args)
    ident, text = generate(config, project or Path.cwd(), overrides=overrides)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{ident}.py"
    path.write_text(text)
    print(f"wrote {path} (DAG id {ident})")
