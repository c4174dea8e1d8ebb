"""`taktstock train`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from taktstock.commands.common import split_config_args

if TYPE_CHECKING:
    from taktstock.commands.launch import LaunchOptions

_DIST = "Distributed (torchrun)"


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(train)


def train(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run-dir",
            help="Run directory (default experiments/runs/<name>-<time>), or a URL (s3://...). If it holds a run with the same "
            "config, that run is continued (or left alone when complete).",
        ),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue the run in this directory (or URL) from its newest valid checkpoint.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the config changed in ways that break exactness.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run that --run-dir holds (its checkpoints and results are deleted).")
    ] = False,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Evaluate the best model on the test split afterwards.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print config, model summary and batch shapes; do not train.")] = False,
    fast_dev_run: Annotated[
        bool,
        typer.Option(
            "--fast-dev-run",
            help="Debug run, --fast-dev-run [N]: N (default 1) training and validation batches, one epoch, nothing kept.",
        ),
    ] = False,
    nproc_per_node: Annotated[
        int | None,
        typer.Option("--nproc-per-node", help="Processes per node (one per GPU): starts the run via torchrun.", rich_help_panel=_DIST),
    ] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Number of nodes.", rich_help_panel=_DIST)] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="This node's rank (with --master-addr).", rich_help_panel=_DIST)] = 0,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help="Address of node 0 (static rendezvous).", rich_help_panel=_DIST)
    ] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="Port on node 0 (default 29500).", rich_help_panel=_DIST)] = None,
    rdzv_endpoint: Annotated[
        str | None, typer.Option("--rdzv-endpoint", help="HOST:PORT of a c10d rendezvous (node ranks assigned).", rich_help_panel=_DIST)
    ] = None,
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts", help="Restart the worker group up to K times; it resumes from the last checkpoint.", rich_help_panel=_DIST
        ),
    ] = 0,
) -> None:
    """Train an experiment: taktstock train config.yaml train.epochs=5 optim.lr=3e-4"""
    from taktstock.training.signals import defer_early_usr1

    defer_early_usr1()  # before the slow imports: SLURM's warning may come early (training/signals.py)
    from taktstock.errors import TrainingAborted
    from taktstock.training.trainer import Preempted

    if fast_dev_run:
        from taktstock.commands.fast_dev_run import take_count

        fast_dev_batches, args = take_count(args)
    config_path, overrides = split_config_args(args)
    if overwrite and (resume is not None or run_dir is None):
        from taktstock.errors import UserError

        raise UserError("--overwrite replaces the run in --run-dir: give --run-dir (and not --resume)")
    if config_path is None and resume is None:
        config_path = _default_config()
    if dry_run:
        from taktstock.commands.dry_run import dry_run as do_dry_run

        do_dry_run(config_path, overrides)
        return
    distributed = nproc_per_node is not None or nnodes > 1 or rdzv_endpoint
    if fast_dev_run:
        from taktstock.commands.fast_dev_run import fast_dev_run as do_fast_dev_run
        from taktstock.errors import UserError

        if resume is not None or run_dir is not None or evaluate or nnodes > 1:
            raise UserError("--fast-dev-run keeps nothing: it takes no --resume, --run-dir, --evaluate or multi-node options")

        def run_once(debug_overrides: list[str], tmp_run: Path) -> None:
            if distributed:
                from taktstock.commands.launch import LaunchOptions

                opts = LaunchOptions(nproc_per_node or 1, 1, 0, master_addr, master_port, rdzv_endpoint, 0)
                _launch(config_path, debug_overrides, tmp_run, None, False, False, opts, report=False)
            else:
                from taktstock.training.run import train as run_train

                run_train(config_path, debug_overrides, run_dir=tmp_run)

        do_fast_dev_run(fast_dev_batches, overrides, run_once)
        return
    if distributed:
        from taktstock.commands.launch import LaunchOptions

        opts = LaunchOptions(nproc_per_node or 1, nnodes, node_rank, master_addr, master_port, rdzv_endpoint, max_restarts)
        _launch(config_path, overrides, run_dir, resume, force, evaluate, opts, overwrite=overwrite)
        return
    from taktstock.commands.launch import restart_count
    from taktstock.training.distributed import DistEnv
    from taktstock.training.run import train as run_train

    if resume is None and run_dir is not None and restart_count() > 0:
        from taktstock.remote.location import is_url, mirror_dir
        from taktstock.run_dir import RunDir

        # torchrun restarted the worker group: continue the run from its newest valid checkpoint.
        if RunDir(mirror_dir(run_dir) if is_url(run_dir) else Path(run_dir)).config.is_file():
            resume, overwrite = run_dir, False  # --overwrite was for the first attempt, not for its restarts

    try:
        result = run_train(config_path, overrides, run_dir=run_dir, resume=resume, force=force, overwrite=overwrite)
    except Preempted as exc:
        from taktstock.training.signals import exit_code_for

        sys.exit(exit_code_for(exc.signal_name))
    except TrainingAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if not DistEnv.from_environ().is_main:
        return  # rank 0 reports (and evaluates) for the whole group
    if os.environ.get("TAKTSTOCK_LAUNCHED"):
        return  # started by `taktstock train --nproc-per-node`: the launcher evaluates and reports
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
            _upload_eval(run_dir, resume, result.run_dir)
            return  # evaluate's report ends with the run directory line
    print(f"run directory: {result.run_dir}")


def _upload_eval(run_dir: str | None, resume: str | None, local: Path) -> None:
    """--evaluate of a run at a URL: its eval/ goes next to the run in the bucket (training uploaded the rest)."""
    from taktstock.remote.location import RemoteRun, is_url

    url = next((u for u in (resume, run_dir) if is_url(u)), None)
    if url is not None:
        RemoteRun(url, local).upload_dir("eval")


def _default_config() -> Path:
    """`taktstock train` without a file trains ./config.yaml, as a project's README says; built-in defaults never silently."""
    from taktstock.errors import UserError

    path = Path("config.yaml")
    if not path.is_file():
        raise UserError(f"no config file given and no config.yaml in {Path.cwd()}: run taktstock train CONFIG [key=value ...]")
    print("note: no config file given: using ./config.yaml", file=sys.stderr)
    return path


def _launch(
    config_path: Path | None,
    overrides: list[str],
    run_dir: str | None,
    resume: str | None,
    force: bool,
    evaluate: bool,
    opts: LaunchOptions,
    overwrite: bool = False,
    report: bool = True,
) -> None:
    from taktstock.commands.launch import LaunchFailed, launch

    try:
        target = launch(config_path, overrides, run_dir, resume, force, opts, overwrite)
    except LaunchFailed as exc:
        if exc.message:
            print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if opts.node_rank != 0 or not report:
        return
    if evaluate:
        from taktstock.evaluation.evaluate import evaluate as run_evaluate

        run_evaluate(target)
        _upload_eval(run_dir, resume, target)
        return  # evaluate's report ends with the run directory line
    print(f"run directory: {target}")
