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


def run_trial(config: Config, run_dir: Path, report: Report, quiet: bool = True) -> TrialOutcome:
    """Train `config` in `run_dir`; failures (exceptions, NaN -> TrainingAborted) become a FAIL outcome with the reason."""
    from taktstock.training.run import train

    run_dir.mkdir(parents=True, exist_ok=True)
    reporter = TrialReporter(config.metrics.monitor, report)
    t0 = time.time()
    log = (run_dir / "train.log").open("a") if quiet else None
    try:
        with contextlib.ExitStack() as stack:
            if log is not None:  # trial output goes to RUN_DIR/train.log, the sweep prints one line per trial
                stack.enter_context(contextlib.redirect_stdout(log))
                stack.enter_context(contextlib.redirect_stderr(log))
            result = train(config, run_dir=run_dir, callbacks=[reporter])
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
