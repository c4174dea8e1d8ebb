"""Optuna backend: storage, sampler, pruner, and the worker loop that runs trials until the study has enough.

Counting: COMPLETE, PRUNED and FAIL trials count toward the trial budget, as do RUNNING ones (another worker is
on them). A trial interrupted by a killed process is marked FAIL ("interrupted") and re-queued with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback); the interrupted copy does not count, its retry does.
Local workers take a file lock around "count, then ask", so W workers never start more than the budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from taktstock.config.schema import TuneConfig
from taktstock.errors import ConfigError, UserError
from taktstock.tuning.objective import TrialOutcome, run_trial
from taktstock.tuning.space import SearchSpace

HEARTBEAT_S = 10
GRACE_S = 60
INTERRUPTED = "interrupted (the process running it was stopped); re-queued with the same parameters"


def make_storage(url: str | None, sweep_dir: Path) -> Any:
    """Embedded Optuna journal file in the sweep directory, or any SQLAlchemy URL (PostgreSQL, MySQL, SQLite)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    if url is None:
        path = str(sweep_dir / "study.journal")
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            failed_trial_callback=retry_callback(),
        )
    except ImportError as exc:
        raise UserError(
            f"--storage {_redact(url)}: missing database driver ({exc}); for PostgreSQL: pip install 'taktstock[postgres]'"
        ) from None
    except Exception as exc:
        raise UserError(f"--storage {_redact(url)}: cannot open the study storage: {str(exc).splitlines()[0]}") from None


def _redact(url: str) -> str:
    """Hide a password in a database URL for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"


def check_sampler(tune: TuneConfig, space: SearchSpace) -> None:
    """Fail before any trial for a sampler that cannot work on this space."""
    if tune.sampler == "grid":
        space.grid()
    if tune.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tune.sampler: cmaes needs the 'cmaes' package (pip install 'taktstock[tune]' or pip install cmaes)"
            ) from None
        if all(d.param.type == "categorical" for d in space.dims):
            raise ConfigError("tune.sampler: cmaes needs at least one float or int dimension; use tpe or random for categorical spaces")


def grid_size(space: SearchSpace) -> int:
    n = 1
    for values in space.grid().values():
        n *= len(values)
    return n


def make_sampler(tune: TuneConfig, space: SearchSpace, seed: int) -> Any:
    import optuna

    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "grid":
        return _grid_sampler_class()(space.grid(), seed=seed)
    if tune.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=tune.startup_trials, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, tune.startup_trials))


def make_pruner(tune: TuneConfig) -> Any:
    import optuna

    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if tune.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, tune.warmup_epochs))
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, tune.warmup_epochs))
    return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)


def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """GridSampler whose end-of-grid `study.stop()` is left out: trials are asked, not optimize()d, and the
        budget is already capped at the grid size."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def quiet_optuna() -> None:
    """Optuna's INFO lines and "experimental API" warnings would drown the one line per trial we print."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def create_study(storage: Any, name: str, mode: str) -> Any:
    """Create (or load) the study once, before any worker starts (so workers never race to create it)."""
    import optuna

    quiet_optuna()
    direction = "maximize" if mode == "max" else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise UserError(f"study '{name}' exists with direction {study.direction.name.lower()}, metrics.mode asks to {direction}")
    return study


def load_study(storage: Any, name: str, sampler: Any, pruner: Any) -> Any:
    import optuna

    quiet_optuna()
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def retry_callback() -> Any:
    """Re-queue an interrupted trial once: Optuna >= 4.9 renamed RetryFailedTrialCallback (the old name warns)."""
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=1)


def fail_interrupted(study: Any) -> list[int]:
    """Mark RUNNING trials FAIL and re-queue them; only for storage no other live process uses (embedded, locked)."""
    from optuna.trial import TrialState

    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
        study.tell(t.number, state=TrialState.FAIL)
        retry_callback()(study, study._storage.get_trial(t._trial_id))
        numbers.append(t.number)
    return numbers


def counted(study: Any) -> int:
    """Trials that count toward the budget (see module docstring)."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {RetryFailedTrialCallback.retried_trial_number(t) for t in trials} - {None}
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in trials if t.state in live or (t.state == TrialState.FAIL and t.number not in retried))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Keep a trial alive in heartbeat-enabled storage (RDB), so a dead worker's trial is failed and retried by others."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; the trial must not die of it
                storage.record_heartbeat(trial._trial_id)

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, daemon=True, name="optuna-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def run_worker(
    study: Any,
    space: SearchSpace,
    budget: int,
    sweep_dir: Path,
    deadline: float | None,
    parent_run_id: str | None = None,
    nproc: int = 1,
    on_trial: Callable[[int, dict[str, Any], TrialOutcome], None] | None = None,
) -> int:
    """Ask and run trials until the study holds `budget` counted trials or the deadline passes; returns trials run."""
    import optuna
    from optuna.trial import TrialState

    distributions = space.distributions()
    ran = 0
    while deadline is None or time.time() < deadline:
        with file_lock(sweep_dir / ".ask.lock"):
            optuna.storages.fail_stale_trials(study)
            if counted(study) >= budget:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat ourselves
                trial = study.ask(fixed_distributions=distributions)
        run_dir = sweep_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("fail_reason", None)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")

        def report(value: float, index: int, trial: Any = trial) -> bool:
            trial.report(value, index)
            return trial.should_prune()

        try:
            with heartbeat(study, trial):
                try:
                    config = space.trial_config(trial.params, parent_run_id)
                except UserError as exc:
                    outcome = TrialOutcome("FAIL", None, run_dir, f"invalid sampled config: {exc}")
                else:
                    outcome = run_trial(config, run_dir, report, nproc=nproc)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
            # A deliberate stop says nothing about the parameters: always re-queue (a crash is retried once only).
            optuna.storages.RetryFailedTrialCallback(max_retry=None)(study, study._storage.get_trial(trial._trial_id))
            raise
        trial.set_user_attr("duration_s", round(outcome.duration_s, 3))
        if outcome.state == "COMPLETE":
            study.tell(trial, outcome.value)
        elif outcome.state == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("fail_reason", outcome.reason)
            study.tell(trial, state=TrialState.FAIL)
        _mark_run(run_dir, trial.number, outcome)
        ran += 1
        if on_trial is not None:
            on_trial(trial.number, trial.params, outcome)
    return ran


def _mark_run(run_dir: Path, number: int, outcome: TrialOutcome) -> None:
    """Record the trial's verdict in its run.json (so `runs` listings show pruned/failed trials)."""
    from taktstock.run_dir import RunDir

    if run_dir.is_dir():
        fields: dict[str, Any] = {"tune_trial": number, "tune_state": outcome.state}
        if outcome.reason:
            fields["tune_reason"] = outcome.reason
        with contextlib.suppress(OSError):
            RunDir(run_dir).update_info(**fields)
