"""`taktstock submit k8s`: a Kubeflow PyTorchJob manifest for the experiment (printed, written, or applied)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

_ARGS_HELP = "CONFIG file, then key.path=value overrides (the job trains with them)."


def k8s(
    args: Annotated[list[str], typer.Argument(help=_ARGS_HELP, show_default=False)],
    image: Annotated[str, typer.Option("--image", help="Container image with taktstock (and the data or access to it).")],
    run_dir: Annotated[str, typer.Option("--run-dir", help="Run directory URL (s3://..., gs://...): pods on any node share it.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Pods (one launcher each): a Master and nodes-1 Workers.")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per pod (one process each; 0: one CPU process).")] = 0,
    cpu: Annotated[str | None, typer.Option("--cpu", help="CPU request and limit per pod, e.g. 8.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory request and limit per pod, e.g. 64Gi.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME=VALUE in every pod (repeatable).")] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="Kubernetes Secret whose keys become environment variables, e.g. storage credentials."),
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Namespace (default: kubectl's).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Job name (default taktstock-<experiment.name>).")] = None,
    backoff_limit: Annotated[int, typer.Option("--backoff-limit", help="Pod restarts before the job fails.")] = 10,
    grace: Annotated[int, typer.Option("--grace", help="Seconds a terminated pod has to checkpoint and upload.")] = 120,
    allow_local: Annotated[
        bool, typer.Option("--allow-local", help="Accept a local --run-dir (a volume you mount at that path in every pod).")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the manifest to this file (default: print it).")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="kubectl apply -f the manifest (kubectl must be on PATH).")] = False,
) -> None:
    """Write a PyTorchJob: taktstock submit k8s config.yaml --image IMG --nodes 2 --gpus-per-node 8 --run-dir s3://bucket/runs/exp"""
    from taktstock.commands.common import split_config_args
    from taktstock.config.loader import load_config
    from taktstock.errors import UserError
    from taktstock.pipelines import k8s as k8s_manifest
    from taktstock.remote.location import is_url, redact

    config_path, overrides = split_config_args(args)
    if config_path is None:
        raise UserError("submit k8s needs an experiment file: taktstock submit k8s CONFIG [key=value ...] --image IMG --run-dir URL")
    config = load_config(config_path, overrides)  # a bad config fails here, not in the cluster
    if not is_url(run_dir) and not allow_local:
        raise UserError(
            f"--run-dir {run_dir}: a pod's local disk is lost when it is rescheduled; give an object-store URL "
            "(s3://bucket/prefix/run) or --allow-local for a volume mounted at that path in every pod"
        )
    if is_url(run_dir) and redact(run_dir) != run_dir:
        raise UserError(f"--run-dir {redact(run_dir)}: no credentials or query in the URL; pass them with --secret")
    opts = k8s_manifest.K8sOptions(
        image,
        nodes,
        gpus_per_node,
        cpu,
        memory,
        env or [],
        secret or [],
        namespace,
        name or k8s_manifest.default_name(config.experiment.name),
    )
    opts.backoff_limit, opts.grace = backoff_limit, grace
    opts.validate()
    text = k8s_manifest.to_yaml(k8s_manifest.manifest(config_path, overrides, run_dir, opts))
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    elif not apply:
        sys.stdout.write(text)
    if apply:
        _apply(text, out)


def _apply(text: str, out: Path | None) -> None:
    import shutil
    import subprocess

    from taktstock.errors import UserError

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise UserError("--apply: kubectl is not on PATH (write the manifest with --out and apply it where kubectl is)")
    cmd = [kubectl, "apply", "-f", str(out) if out else "-"]
    proc = subprocess.run(cmd, input=None if out else text, text=True)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
