"""Run a sweep with Ray Tune (extra taktstock[ray]): the same search space through Ray's OptunaSearch and an ASHA
scheduler. Trials are the same run directories as with the Optuna backend; results go to the same outputs.

Local Ray by default (ray.init(num_cpus=max(2, workers), include_dashboard=False)); --address joins a cluster.
Ray's experiment state lives in SWEEP_DIR/ray, so re-running the command restores an unfinished sweep.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from taktstock.config.schema import Config
from taktstock.errors import UserError
from taktstock.tuning.outputs import TrialRecord
from taktstock.tuning.space import SearchSpace
from taktstock.tuning.sweep import SweepSpec

METRIC = "objective"  # the monitored value under a fixed name (Ray splits metric names on '/')
EXPERIMENT = "tune"


def _trainable(params: dict[str, Any], sweep_dir: str, cwd: str, parent_run_id: str | None, threads: int, nproc: int) -> None:
    """One Ray trial: a taktstock run in SWEEP_DIR/trials/trial-NNNN, reporting after every validation."""
    os.chdir(cwd)  # Ray starts trials elsewhere; relative paths of the experiment (data cache, ...) are the user's
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    from taktstock.tuning.objective import run_trial
    from taktstock.tuning.sweep import load_base_config

    config = load_base_config(Path(sweep_dir))
    space = SearchSpace(config)
    number = _number(Path(tune.get_context().get_trial_dir()).name)
    run_dir = Path(sweep_dir) / "trials" / f"trial-{number:04d}"

    def report(value: float, index: int) -> bool:
        try:
            tune.report({METRIC: value, "validation": index + 1})
        except (SystemExit, Exception):  # Ray stops a trial the scheduler dropped (SystemExit): end the run cleanly as pruned
            return True
        return False

    outcome = run_trial(space.trial_config(params, parent_run_id), run_dir, report, nproc=nproc)
    (run_dir / "tune_outcome.json").write_text(json.dumps({"state": outcome.state, "value": outcome.value, "reason": outcome.reason}))
    if outcome.state == "FAIL":
        raise RuntimeError(outcome.reason)


def _number(trial_dir_name: str) -> int:
    """Ray names trial directories <trainable>_<id>_<index>_<params>...; the 1-based index gives the trial number."""
    import re

    match = re.search(r"_[0-9a-f]{5,}_(\d+)(?:_|$)", trial_dir_name)
    if match is None:
        raise RuntimeError(f"unexpected Ray trial directory name: {trial_dir_name}")
    return int(match.group(1)) - 1


def run(
    config: Config,
    space: SearchSpace,
    sweep_dir: Path,
    spec: SweepSpec,
    budget: int,
    timeout_s: float | None,
    workers: int,
    address: str | None,
) -> list[TrialRecord]:
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise UserError("--backend ray needs Ray Tune: pip install 'taktstock[ray]'") from None
    from taktstock.tuning import study as st

    sweep_dir = sweep_dir.resolve()
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    cpus = max(2, workers * spec.nproc_per_trial)
    if address:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        if config.tune.sampler == "grid":
            budget = min(budget, st.grid_size(space))
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable,
                sweep_dir=str(sweep_dir),
                cwd=os.getcwd(),
                parent_run_id=spec.parent_run_id,
                threads=max(1, cpus // workers),
                nproc=spec.nproc_per_trial,
            ),
            {"cpu": spec.nproc_per_trial},
        )
        storage = sweep_dir / "ray"
        path = storage / EXPERIMENT
        if path.is_dir() and tune.Tuner.can_restore(str(path)):
            print(f"restoring the Ray Tune experiment in {path}")
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
        else:
            st.quiet_optuna()
            search = OptunaSearch(
                space=space.distributions(),
                metric=METRIC,
                mode=config.metrics.mode,
                sampler=st.make_sampler(config.tune, space, config.seed),
            )
            if config.tune.pruner == "none":
                scheduler: Any = FIFOScheduler()
            else:
                max_t = max(config.train.epochs, 1)
                scheduler = ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=max_t,
                    grace_period=_grace_period(config.tune.warmup_epochs, max_t),
                    reduction_factor=3,
                    stop_last_trials=False,  # a trial that reaches max_t finishes its own run (final checkpoint, weights)
                )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search,
                    scheduler=scheduler,
                    metric=METRIC,
                    mode=config.metrics.mode,
                    num_samples=budget,
                    max_concurrent_trials=workers,
                    time_budget_s=timeout_s,
                ),
                run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(storage), verbose=0, log_to_file=True),
            )
        print(f"Ray Tune: {budget} trials, {workers} at a time, state in {path}")
        results = tuner.fit()
        return _records(results, config.metrics.mode, sweep_dir)
    finally:
        ray.shutdown()


def _records(results: Any, mode: str, sweep_dir: Path) -> list[TrialRecord]:
    records = []
    for result in results:
        number = _number(Path(result.path).name)
        run_dir = sweep_dir / "trials" / f"trial-{number:04d}"
        history = result.metrics_dataframe
        values = [] if history is None or METRIC not in history else [float(v) for v in history[METRIC] if math.isfinite(float(v))]
        outcome_file = run_dir / "tune_outcome.json"
        outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
        params = {k: v for k, v in (result.config or {}).items()}
        if outcome is not None and outcome["state"] != "FAIL":  # our own verdict wins over Ray's teardown of a stopped trial
            state, value, reason = outcome["state"], outcome["value"], None
        elif result.error is not None or outcome is not None:
            state, value = "FAIL", None
            reason = (outcome or {}).get("reason") or str(result.error).strip().splitlines()[-1][:500]
        else:  # stopped by the scheduler before the run could record its outcome
            state, value, reason = "PRUNED", (max(values) if mode == "max" else min(values)) if values else None, None
        duration = result.metrics.get("time_total_s") if result.metrics else None
        records.append(TrialRecord(number, state, value, params, duration, str(run_dir), reason, len(values)))
    return records


def _grace_period(warmup_epochs: int, max_t: int) -> int:
    """ASHA's grace period: tune.warmup_epochs, at most the trial length (ASHA asserts grace_period <= max_t)."""
    grace = max(1, warmup_epochs)
    if grace > max_t:
        print(
            f"note: tune.warmup_epochs={warmup_epochs} exceeds train.epochs={max_t}: ASHA's grace period is {max_t} "
            "(trials run to the end before they can be stopped)",
            file=sys.stderr,
        )
        return max_t
    return grace
