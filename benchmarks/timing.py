"""taktstock callbacks (train.callbacks) that timestamp Trainer.fit from inside the real loop."""

from __future__ import annotations

import time
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
