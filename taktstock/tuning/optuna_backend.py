"""Run a sweep with Optuna: the study is created here, then trials run in this process (--workers 1)
or in W worker processes that share the storage (`python -m taktstock.tuning.worker`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from taktstock.config.schema import Config
from taktstock.tuning import study as st
from taktstock.tuning.objective import TrialOutcome
from taktstock.tuning.outputs import TrialRecord, records_from_study
from taktstock.tuning.space import SearchSpace
from taktstock.tuning.sweep import SweepSpec


def worker_seed(seed: int, worker: int, existing: int) -> int:
    """Distinct sampler seeds per worker and per resumed invocation (a resumed random search must not repeat itself)."""
    return (seed * 1_000_003 + worker * 7_919 + existing * 104_729) % (2**31 - 1)


def trial_line(number: int, params: dict[str, Any], outcome: TrialOutcome, space: SearchSpace) -> str:
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in space.decode(params).items())
    value = f" {space.monitor}={outcome.value:.4f}" if outcome.value is not None else ""
    why = f" ({outcome.reason})" if outcome.reason else ""
    return f"trial {number} {outcome.state}{value} in {outcome.duration_s:.1f}s  {shown}{why}"


def run(
    config: Config, space: SearchSpace, sweep_dir: Path, spec: SweepSpec, budget: int, timeout_s: float | None, workers: int
) -> list[TrialRecord]:
    storage = st.make_storage(spec.storage, sweep_dir)
    study = st.create_study(storage, spec.study, config.metrics.mode)
    if spec.storage is None:  # embedded: we hold the sweep lock, so RUNNING trials are leftovers of a killed run
        for n in st.fail_interrupted(study):
            print(f"trial {n} was interrupted: marked FAIL and re-queued")
    if config.tune.sampler == "grid" and budget > st.grid_size(space):
        print(f"grid of {st.grid_size(space)} points: running {st.grid_size(space)} trials, not {budget}")
        budget = st.grid_size(space)
    done = st.counted(study)
    if done >= budget:
        print(f"study '{spec.study}' already has {done} trials (budget {budget}): nothing to run")
    else:
        print(f"study '{spec.study}': {done} trials done, running {budget - done} more with {workers} worker(s)")
    deadline = time.time() + timeout_s if timeout_s else None
    if done < budget:
        if workers == 1:
            _run_here(config, space, study, spec, budget, sweep_dir, deadline)
        else:
            _run_workers(study, space, sweep_dir, budget, deadline, workers)
    return records_from_study(study)


def _run_here(
    config: Config, space: SearchSpace, study: Any, spec: SweepSpec, budget: int, sweep_dir: Path, deadline: float | None
) -> None:
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = st.make_sampler(config.tune, space, worker_seed(config.seed, 0, existing))
    study.pruner = st.make_pruner(config.tune)
    st.run_worker(
        study,
        space,
        budget,
        sweep_dir,
        deadline,
        spec.parent_run_id,
        spec.nproc_per_trial,
        on_trial=lambda n, p, o: print(trial_line(n, p, o, space), flush=True),
    )


def _set_pdeathsig() -> None:
    """Workers die with the sweep process (Linux), so a killed sweep leaves no orphan trials running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _run_workers(study: Any, space: SearchSpace, sweep_dir: Path, budget: int, deadline: float | None, workers: int) -> None:
    logs = sweep_dir / "logs"
    logs.mkdir(exist_ok=True)
    procs = []
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    for i in range(workers):
        cmd = [sys.executable, "-m", "taktstock.tuning.worker", str(sweep_dir), str(i), str(workers), str(budget), str(deadline or 0)]
        with (logs / f"worker-{i}.log").open("a") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_set_pdeathsig))
    seen: set[int] = set()
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            _print_new(study, space, seen)
            if not alive:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for i, rc in bad:
        tail = (logs / f"worker-{i}.log").read_text().strip().splitlines()[-5:]
        print(f"worker {i} exited with code {rc}; last lines of {logs / f'worker-{i}.log'}:\n  " + "\n  ".join(tail), file=sys.stderr)


def _print_new(study: Any, space: SearchSpace, seen: set[int]) -> None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.number in seen:
            continue
        seen.add(t.number)
        outcome = TrialOutcome(
            t.state.name,
            t.value if t.state != TrialState.FAIL else None,
            Path(t.user_attrs.get("run_dir", "")),
            t.user_attrs.get("fail_reason"),
            t.user_attrs.get("duration_s") or 0.0,
        )
        print(trial_line(t.number, t.params, outcome, space), flush=True)
