"""`taktstock submit slurm`: write a batch script for the experiment under its run directory and submit it.
`taktstock submit k8s` (a Kubeflow PyTorchJob) lives in commands/submit_k8s_cmd.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from taktstock.commands import submit_k8s_cmd

submit_app = typer.Typer(help="Submit a training run to a cluster scheduler (SLURM, Kubernetes).", no_args_is_help=True)

_ARGS_HELP = "CONFIG file, then key.path=value overrides (the job trains with them)."


def register(app: typer.Typer) -> None:
    app.add_typer(submit_app, name="submit")


@submit_app.command(context_settings={"allow_interspersed_args": True})
def slurm(
    args: Annotated[list[str], typer.Argument(help=_ARGS_HELP, show_default=False)],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes (one launcher per node).")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node (one process each).")] = 0,
    time: Annotated[str, typer.Option("--time", help="Time limit (HH:MM:SS, D-HH:MM:SS, ...).")] = "01:00:00",
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition (default: the cluster's).")] = None,
    cpus_per_task: Annotated[int | None, typer.Option("--cpus-per-task", help="CPUs per node's task.")] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory per node, e.g. 64G.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Account to charge.")] = None,
    job_name: Annotated[str | None, typer.Option("--job-name", help="Job name (default: experiment.name).")] = None,
    grace: Annotated[
        int, typer.Option("--grace", help="Seconds before the time limit at which SIGUSR1 asks the run to checkpoint and requeue.")
    ] = 120,
    port: Annotated[int, typer.Option("--port", help="Rendezvous port on the first node (multi-process jobs).")] = 29500,
    sbatch_lines: Annotated[
        list[str] | None, typer.Option("--sbatch", help="Extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable).")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default experiments/runs/<name>-<time>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the script; write and submit nothing.")] = False,
) -> None:
    """Write RUN_DIR/slurm.sbatch and submit it: taktstock submit slurm config.yaml --nodes 2 --gpus-per-node 4 --time 24:00:00"""
    from taktstock.commands.common import split_config_args
    from taktstock.config.loader import load_config
    from taktstock.config.paths import with_absolute_paths
    from taktstock.errors import UserError
    from taktstock.pipelines import slurm as slurm_script
    from taktstock.run_dir import RunDir
    from taktstock.training.resume import relaunch_plan

    config_path, overrides = split_config_args(args)
    if config_path is None:
        raise UserError("submit slurm needs an experiment file: taktstock submit slurm CONFIG [key=value ...] --time HH:MM:SS")
    config = load_config(config_path, overrides)  # a bad config fails here, not in the queue
    opts = slurm_script.SlurmOptions(
        nodes,
        gpus_per_node,
        time,
        partition,
        cpus_per_task,
        mem,
        account,
        job_name or config.experiment.name,
        grace,
        port,
        sbatch_lines or [],
    )
    opts.validate()
    run = RunDir((run_dir or RunDir.new(config.experiment.output_dir, config.experiment.name).root).resolve())
    # What the job will do with the run directory, decided now: a different config fails here (exit 2).
    if relaunch_plan(run, with_absolute_paths(config), overwrite=False) == "complete":
        print(f"{run.root} holds a completed run: nothing to submit", file=sys.stderr)
        return
    text = slurm_script.script(sys.executable, config_path.resolve(), overrides, run.root, Path.cwd(), opts)
    if dry_run:
        sys.stdout.write(text)
        return
    slurm_script.sbatch_executable()  # nothing is written where the job cannot be submitted
    run.root.mkdir(parents=True, exist_ok=True)
    path = run.root / "slurm.sbatch"
    path.write_text(text)
    job = slurm_script.sbatch(path)
    print(f"submitted job {job}: run directory {run.root} (log {run.root / f'slurm-{job}.out'})")


submit_app.command(context_settings={"allow_interspersed_args": True})(submit_k8s_cmd.k8s)  # its own module: one job per file
