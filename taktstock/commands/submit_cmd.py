"""`taktstock submit`: hand a training run to a cluster scheduler (`k8s`: commands/submit_k8s_cmd.py)."""

from __future__ import annotations

import typer

from taktstock.commands import submit_k8s_cmd

submit_app = typer.Typer(help="Submit a training run to a cluster scheduler (Kubernetes).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(submit_app, name="submit")


submit_app.command(context_settings={"allow_interspersed_args": True})(submit_k8s_cmd.k8s)
