"""train.profile: a torch.profiler window over a few optimizer steps, as a trainer callback.

Off by default and then not even registered; when on, it starts before step `start_step` and stops after
`start_step + steps - 1`. Rank 0 profiles. Written to RUN_DIR/profile/:
  * `rank0.<time>.pt.trace.json`: a Chrome trace (open in ui.perfetto.dev or chrome://tracing; TensorBoard's
    profiler plugin, torch-tb-profiler, reads the same file with `tensorboard --logdir RUN_DIR/profile`);
  * `top_ops.txt`: the table of the most expensive ops, also printed when the window closes;
  * `memory_snapshot.pickle` (CUDA and `memory: true`): allocator history for pytorch.org/memory_viz.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from taktstock.config.schema import ProfileConfig

TOP_OPS = 12


def profiler_callbacks(cfg: ProfileConfig | None, out_dir: Path, device: torch.device, is_main: bool) -> list[Any]:
    """[the profiler window] when train.profile is set on this (main) process, else [] (nothing per step)."""
    return [ProfilerWindow(cfg, out_dir, device)] if cfg is not None and is_main else []


class ProfilerWindow:
    """Profiles optimizer steps start_step .. start_step + steps - 1 (1-based, as in the logs)."""

    def __init__(self, cfg: ProfileConfig, out_dir: Path, device: torch.device) -> None:
        self.cfg, self.out_dir, self.cuda = cfg, out_dir, device.type == "cuda"
        self.last = cfg.start_step + cfg.steps - 1
        self.prof: Any = None
        self.first_step = 0

    def on_train_start(self, trainer: Any) -> None:
        self._maybe_start(trainer.state.step)

    def on_step_end(self, trainer: Any) -> None:
        step = trainer.state.step
        if self.prof is not None and step >= self.last:
            self._stop(step)
        else:
            self._maybe_start(step)

    def on_train_end(self, trainer: Any) -> None:
        if self.prof is not None:  # the run ended inside the window: keep what was recorded
            self._stop(trainer.state.step)
        elif not self.first_step and trainer.state.step < self.cfg.start_step:
            print(
                f"note: nothing profiled: the run ended at step {trainer.state.step}, before train.profile.start_step {self.cfg.start_step}"
            )

    def _maybe_start(self, step: int) -> None:
        if self.prof is not None or step + 1 != self.cfg.start_step:
            return
        if not self.cuda:
            # Kineto (the profiler's tracing library) of a CUDA build logs start/stop lines and a failed GPU query
            # on a machine without one: noise in a CPU run's log. A user's own setting wins.
            os.environ.setdefault("KINETO_LOG_LEVEL", "99")
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.prof = profile(activities=activities, record_shapes=True, profile_memory=self.cfg.memory)
        if self.cfg.memory and self.cuda:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
        self.first_step = step + 1
        # Files of an earlier run in this directory (or an earlier attempt at this window) would mix with this trace.
        for stale in (*self.out_dir.glob("*.pt.trace.json"), self.out_dir / "top_ops.txt", self.out_dir / "memory_snapshot.pickle"):
            stale.unlink(missing_ok=True)
        self.prof.start()

    def _stop(self, step: int) -> None:
        from torch.profiler import tensorboard_trace_handler

        prof, self.prof = self.prof, None
        if self.cuda:
            torch.cuda.synchronize()  # the window's kernels belong to it
        prof.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tensorboard_trace_handler(str(self.out_dir), worker_name="rank0")(prof)
        if self.cfg.memory and self.cuda:
            torch.cuda.memory._dump_snapshot(str(self.out_dir / "memory_snapshot.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=TOP_OPS, max_name_column_width=40)
        (self.out_dir / "top_ops.txt").write_text(table + "\n")
        print(f"profile of steps {self.first_step}-{step}: {self.out_dir} (top ops by {sort.replace('_', ' ')})")
        print(table)
