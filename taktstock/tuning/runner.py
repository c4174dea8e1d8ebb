"""`taktstock tune` top to bottom: check everything, prepare the sweep directory, run a backend, write the results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from taktstock.config.loader import load_config
from taktstock.errors import UserError
from taktstock.tuning.outputs import TrialRecord, write_outputs
from taktstock.tuning.space import SearchSpace
from taktstock.tuning.sweep import SweepSpec, default_sweep_dir, sweep_lock, write_base_config


@dataclass
class TuneOptions:
    config: Path | None
    overrides: list[str]
    trials: int | None = None
    timeout_s: float | None = None
    workers: int = 1
    storage: str | None = None
    study: str | None = None
    out: Path | None = None
    backend: str = "optuna"
    address: str | None = None
    nproc_per_trial: int = 1


def run_sweep(opts: TuneOptions) -> tuple[Path, TrialRecord | None]:
    """Run (or resume) a sweep; returns the sweep directory and the best trial."""
    from taktstock.tuning import study as st

    if opts.config is None:
        raise UserError("tune needs an experiment file with a `tune` section: taktstock tune sweep.yaml")
    config = load_config(opts.config, opts.overrides)
    space = SearchSpace(config)  # every dimension is checked here, before anything runs
    st.check_sampler(config.tune, space)
    if opts.nproc_per_trial < 1:
        raise UserError(f"--nproc-per-trial must be >= 1 (got {opts.nproc_per_trial})")
    if opts.workers < 1:
        raise UserError(f"--workers must be >= 1 (got {opts.workers})")
    budget = opts.trials if opts.trials is not None else config.tune.trials
    if budget < 1:
        raise UserError(f"--trials must be >= 1 (got {budget})")
    timeout_s = opts.timeout_s if opts.timeout_s is not None else config.tune.timeout_s
    if opts.backend not in ("optuna", "ray"):
        raise UserError(f"--backend must be optuna or ray (got {opts.backend})")
    if opts.backend == "ray" and opts.storage:
        raise UserError("--storage is for the optuna backend; Ray Tune keeps its state in the sweep directory")
    if opts.address and opts.backend != "ray":
        raise UserError("--address is for --backend ray")

    sweep_dir = opts.out or default_sweep_dir(config)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with sweep_lock(sweep_dir):
        write_base_config(config, sweep_dir)
        spec = SweepSpec.read(sweep_dir)
        if spec is None:
            import time

            spec = SweepSpec(opts.backend, opts.study or config.experiment.name, opts.storage, created=time.time())
        elif spec.backend != opts.backend or (opts.study and opts.study != spec.study) or (opts.storage and opts.storage != spec.storage):
            raise UserError(
                f"{sweep_dir} holds the {spec.backend} study '{spec.study}' (storage {spec.storage or 'embedded'}); "
                "resume it with the same --backend/--study/--storage, or use another --out"
            )
        mlflow_on = config.logging.mlflow.enabled
        if mlflow_on:
            from taktstock.tuning.mlflow_parent import start_parent_run

            spec.parent_run_id = start_parent_run(config, spec.study, sweep_dir, spec.parent_run_id)
        spec.nproc_per_trial = opts.nproc_per_trial
        spec.write(sweep_dir)
        print(f"sweep directory: {sweep_dir}")
        ok = False
        try:
            if opts.backend == "ray":
                from taktstock.tuning import ray_backend

                records = ray_backend.run(config, space, sweep_dir, spec, budget, timeout_s, opts.workers, opts.address)
            else:
                from taktstock.tuning import optuna_backend

                records = optuna_backend.run(config, space, sweep_dir, spec, budget, timeout_s, opts.workers)
            ok = True
        finally:
            if not ok and mlflow_on and spec.parent_run_id:
                from taktstock.tuning.mlflow_parent import finish_parent_run

                finish_parent_run(config, spec.parent_run_id, None, {}, sweep_dir, ok=False)
        best = write_outputs(records, space, spec.study, sweep_dir)
        if mlflow_on and spec.parent_run_id:
            from taktstock.tuning.mlflow_parent import finish_parent_run

            finish_parent_run(config, spec.parent_run_id, best, space.decode(best.params) if best else {}, sweep_dir, ok=True)
    return sweep_dir, best
