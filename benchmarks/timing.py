"""taktstock callbacks (train.callbacks) that timestamp Trainer.fit from inside the real loop, and the config
sections and contender that time a taktstock run with them."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from pathlib import Path
from typing import Any

MARKS: dict[str, float] = {}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


class FitTimer:
    """MARKS["start"], ["last_step"], ["end"] in seconds (perf_counter). On CUDA the last-step mark comes from
    an event re-recorded at every step, so the loop is timed without a host synchronisation per step."""

    def on_train_start(self, trainer: Any) -> None:
        MARKS.clear()
        self.events = None
        if _cuda():
            import torch

            torch.cuda.synchronize()
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.events[0].record()
        MARKS["start"] = time.perf_counter()

    def on_step_end(self, trainer: Any) -> None:
        # The loop window ends at the last optimizer step: the final checkpoint, summary and weights are
        # not part of the hand-written loops; checkpoint cost is measured on its own (checkpoint suite).
        if self.events is not None:
            self.events[1].record()
        else:
            MARKS["last_step"] = time.perf_counter()

    def on_train_end(self, trainer: Any) -> None:
        if self.events is not None:
            import torch

            torch.cuda.synchronize()
            MARKS["last_step"] = MARKS["start"] + self.events[0].elapsed_time(self.events[1]) / 1000
        MARKS["end"] = time.perf_counter()
        MARKS.setdefault("last_step", MARKS["end"])


class FirstStepExit:
    """For the start-up benchmark: print the wall-clock time of the first optimizer step, then end the process."""

    def on_step_end(self, trainer: Any) -> None:
        import os
        import sys

        print(f"FIRST_STEP_AT {time.time():.6f}", file=sys.stderr, flush=True)
        os._exit(0)


def timed_sections(steps: int | None, batch_size: int, log_every_n_steps: int = 20, **train: Any) -> dict[str, Any]:
    """The config sections of a taktstock run timed against a hand-written loop: `steps` optimizer steps timed
    by FitTimer (None: one epoch), no periodic checkpoints, no plots, TensorBoard or progress bar (the loops have none). `train`
    adds keys to the `train` section."""
    return {
        "train": {
            "epochs": 1,
            "max_steps": steps,
            "batch_size": batch_size,
            **train,
            "log_every_n_steps": log_every_n_steps,
            "callbacks": ["benchmarks.timing:FitTimer"],
        },
        "metrics": {"monitor": "train/loss", "mode": "min"},
        "checkpoint": {"every_n_minutes": None, "every_n_steps": None, "every_epoch": False, "save_best": False},
        "logging": {"tensorboard": False, "plots": False, "progress": "off"},
    }


class TimedTrain:
    """A contender's `run`: one `train()` of the experiment in this process, its output silenced; returns
    (seconds from the first to the last optimizer step, samples = steps trained x `per_step`). With `exact`, a
    run that ends before train.max_steps is an error: the hand-written loop would have done more work."""

    def __init__(self, raw: dict[str, Any], run_dir: Path, per_step: int, exact: bool = True) -> None:
        from taktstock.config.loader import validate

        self.config, self.run_dir, self.per_step, self.exact = validate(raw, {}, "<benchmark>"), run_dir, per_step, exact

    def __call__(self) -> tuple[float, int]:
        from taktstock.training.run import train

        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = train(self.config, run_dir=self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.exact and result.steps != self.config.train.max_steps:
            raise RuntimeError(f"taktstock trained {result.steps} steps, expected {self.config.train.max_steps}")
        return MARKS["last_step"] - MARKS["start"], result.steps * self.per_step
