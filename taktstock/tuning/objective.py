"""One trial: a normal training run in its own run directory, reporting the monitored metric after every validation.

Backend-neutral: the Optuna and Ray backends pass a `report(value, index) -> prune?` function.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taktstock.config.schema import Config

# report(value, validation_index) -> True when the trial should stop (pruned).
Report = Callable[[float, int], bool]


class TrialReporter:
    """Trainer callback: report the monitored value after each validation; stop the run when told to prune.

    Pruning sets `trainer.state.stop_reason`, so the loop ends at this validation like an early stop:
    the trial's run directory is complete (checkpoint, metrics, weights) and marked as stopped by pruning.
    The step reported is the validation index (0, 1, ...): one per epoch unless train.val_every_n_steps is set,
    comparable across trials even when the batch size is searched.
    """

    def __init__(self, monitor: str, report: Report) -> None:
        self.monitor, self.report = monitor, report
        self.index = 0
        self.pruned = False

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value) or self.pruned:
            return
        prune = self.report(float(value), self.index)
        self.index += 1
        if prune:
            self.pruned = True
            trainer.state.stop_reason = "pruned"


@dataclass
class TrialOutcome:
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    run_dir: Path
    reason: str | None = None
    duration_s: float = 0.0


def run_trial(config: Config, run_dir: Path, report: Report, quiet: bool = True, nproc: int = 1) -> TrialOutcome:
    """Train `config` in `run_dir`; failures (exceptions, NaN -> TrainingAborted) become a FAIL outcome with the reason.

    A stop request (Ctrl-C, SIGTERM: the trainer checkpoints and raises Preempted) interrupts the whole sweep
    (KeyboardInterrupt), it is not a failure of this trial's parameters.
    """
    if nproc > 1:
        return run_trial_processes(config, run_dir, report, nproc)
    from taktstock.training.run import train
    from taktstock.training.trainer import Preempted

    run_dir.mkdir(parents=True, exist_ok=True)
    reporter = TrialReporter(config.metrics.monitor, report)
    t0 = time.time()
    log = (run_dir / "train.log").open("a") if quiet else None
    try:
        with contextlib.ExitStack() as stack:
            if log is not None:  # trial output goes to RUN_DIR/train.log, the sweep prints one line per trial
                stack.enter_context(contextlib.redirect_stdout(log))
                stack.enter_context(contextlib.redirect_stderr(log))
            # A trial's directory is its own (numbered per trial); a retried trial starts over so that every
            # validation is reported to the pruner again, as the sweep did before relaunches continued runs.
            result = train(config, run_dir=run_dir, callbacks=[reporter], overwrite=True)
    except Preempted as exc:
        raise KeyboardInterrupt(str(exc)) from None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".strip()
        return TrialOutcome("FAIL", None, run_dir, reason.splitlines()[0][:500], time.time() - t0)
    finally:
        if log is not None:
            log.close()
    duration = time.time() - t0
    if reporter.pruned:
        return TrialOutcome("PRUNED", result.best, run_dir, None, duration)
    if result.best is None or not math.isfinite(result.best):
        return TrialOutcome("FAIL", None, run_dir, f"no value of {config.metrics.monitor} (is there a validation split?)", duration)
    return TrialOutcome("COMPLETE", float(result.best), run_dir, None, duration)


def run_trial_processes(config: Config, run_dir: Path, report: Report, nproc: int, poll_s: float = 0.5) -> TrialOutcome:
    """A trial that is itself a multi-process (torchrun) training run.

    All ranks must train the same sampled configuration, so the trial's config is materialised first as
    RUN_DIR/trial.yaml and every rank reads that file (`taktstock train RUN_DIR/trial.yaml --run-dir RUN_DIR`);
    nothing is sampled inside the ranks. Rank 0 writes metrics.jsonl, which is followed here to report each
    validation; pruning sends SIGTERM, which the ranks answer with a checkpoint and a clean exit.
    """
    import json
    import os
    import signal
    import subprocess
    import sys

    from taktstock.config.loader import save_config
    from taktstock.config.paths import with_absolute_paths
    from taktstock.run_dir import RunDir

    run_dir.mkdir(parents=True, exist_ok=True)
    trial_yaml = run_dir / "trial.yaml"
    save_config(with_absolute_paths(config), trial_yaml)  # as the run records it: paths absolute
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "taktstock", "train", str(trial_yaml), "--run-dir", str(run_dir), "--overwrite"]  # as run_trial: starts over
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.time()
    offset, index, pruned = 0, 0, False
    metrics = RunDir(run_dir).metrics
    with (run_dir / "train.log").open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                done = proc.poll() is not None
                if metrics.exists():
                    with metrics.open() as fh:
                        fh.seek(offset)
                        chunk = fh.read()
                    complete = chunk[: chunk.rfind("\n") + 1]  # only whole lines; the rest is still being written
                    offset += len(complete.encode())
                    for line in complete.splitlines():
                        value = json.loads(line).get(config.metrics.monitor)
                        if value is None or not math.isfinite(value):
                            continue
                        # Validations that still land after the prune signal are reported too: the trial's
                        # record then matches its run's metrics.jsonl.
                        if report(float(value), index) and not pruned:
                            pruned = True
                            proc.send_signal(signal.SIGTERM)
                        index += 1
                if done:
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            raise
    duration = time.time() - t0
    info = RunDir(run_dir).read_info()
    best = info.get("best")
    if pruned and info.get("status") != "completed":
        return TrialOutcome("PRUNED", best, run_dir, None, duration)
    # The prune signal may land after the run finished (the metrics are polled); torchrun then reports the
    # signal, but the trial did complete and counts with the value of its whole run.
    if proc.returncode != 0 and not pruned:
        tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return TrialOutcome("FAIL", None, run_dir, f"torchrun exited with {proc.returncode}: {tail[0][:300]}", duration)
    if best is None or not math.isfinite(best):
        return TrialOutcome("FAIL", None, run_dir, f"no value of {config.metrics.monitor} (is there a validation split?)", duration)
    return TrialOutcome("COMPLETE", float(best), run_dir, None, duration)
