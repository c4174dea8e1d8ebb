"""`taktstock tune`: hyperparameter search over the experiment's `tune.space`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from taktstock.commands.common import split_config_args


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(tune)


def tune(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", help="Trials in the study (default tune.trials); re-running resumes up to this.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop starting trials after S seconds (default tune.timeout_s).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Trial processes in parallel on this machine.")] = 1,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Study storage URL (e.g. postgresql://...); default: a journal file in the sweep dir.")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default experiment.name).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep directory (default experiments/sweeps/<name>-<time>); reuse it to resume.")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="optuna or ray (Ray Tune with OptunaSearch + ASHA).")] = "optuna",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (--backend ray); default: a local Ray.")] = None,
    nproc_per_trial: Annotated[
        int, typer.Option("--nproc-per-trial", help="Processes per trial (torchrun); all ranks train the trial's materialised config.")
    ] = 1,
) -> None:
    """Search hyperparameters: taktstock tune sweep.yaml --trials 20 --workers 2"""
    from taktstock.utils.imports import optional_import

    # Checked first: a missing extra must not leave an empty sweep directory behind.
    optional_import("optuna", "tune", "taktstock tune")
    if backend == "ray":
        optional_import("ray.tune", "ray", "taktstock tune --backend ray")
    from taktstock.tuning.runner import TuneOptions, run_sweep

    config_path, overrides = split_config_args(args)
    opts = TuneOptions(config_path, overrides, trials, timeout, workers, storage, study, out, backend, address, nproc_per_trial)
    try:
        run_sweep(opts)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command (with --out DIR) to resume the study", file=sys.stderr)
        sys.exit(130)
