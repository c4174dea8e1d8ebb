"""The checkpointer: the one home of resume.

It owns the registered stateful parts (anything with `state_dict()`/`load_state_dict()`), the save
cadence, the checkpoint format and its compatibility checks (format, world size, intra-op threads),
the learning-rate horizon freeze and the write guards. The trainer only says "a step boundary is
here" (`due`, `save`, `save_best`, `write_best`); files are written through a `CheckpointWriter` (sync or async).

best.pt is not written at each improvement of the monitored metric: `save_best` keeps a host copy of
the state and `write_best` writes it just before the next checkpoint (the trainer calls it there, at the
end of training, at preemption and before a non-finite-loss abort). So the best model costs disk time at
the checkpoint cadence, not once per improvement (short epochs improve often), and crash safety is the
same as before: a checkpoint never covers an improvement whose best.pt is not on disk (best.pt is written
first), and a resume from an older checkpoint replays the improvement and writes the same best.pt again.

A new part is one registration, e.g. EMA weights:  `checkpointer.register("ema", ema)`.
Parts are restored in registration order, per-rank parts (RNG last) after the others.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from taktstock.checkpoint.async_writer import snapshot
from taktstock.checkpoint.environment import numerics_environment, resume_note
from taktstock.checkpoint.manager import CheckpointWriter, checkpoint_name, load_checkpoint
from taktstock.config.schema import CheckpointConfig
from taktstock.errors import CheckpointError, ConfigError, TrainingAborted

FORMAT = 1
REQUIRED = ("format", "model", "optimizer", "rng", "loop", "sums", "monitor", "metrics_offset")
# Schedulers whose shape depends on the total number of steps. Their horizon is frozen at the first
# run's value (stored in checkpoints), so extending train.epochs/max_steps on resume continues the
# same curve; steps past the horizon keep its final learning rate.
HORIZON_SCHEDULERS = ("cosine", "onecycle", "warmup_cosine")


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


class Collectives(Protocol):
    """The part of `training.distributed.DistEnv` the checkpointer uses (a protocol: checkpoint/ sits below training/)."""

    enabled: bool
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...
    def gather_object(self, obj: Any) -> list[Any]: ...
    def all_ranks(self, flag: bool, device: torch.device | None = None) -> bool: ...
    def broadcast_object(self, obj: Any) -> Any: ...


@dataclass
class _Part:
    key: str
    obj: Stateful | None
    per_rank: bool  # each rank's own state (RNG, running sums), saved for every rank
    collective: bool  # state_dict() is a collective every rank must call (FSDP gathering)
    spans: tuple[str, ...]  # top-level keys the part's state_dict fills (default: just `key`)
    merge: Callable[[list[Any], bool], Any] | None  # per-rank state for a forced resume on another world size


class Value:
    """A save-only part: `fn()` is stored; the value is read back from the checkpoint dict by its user."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def state_dict(self) -> Any:
        return self.fn()

    def load_state_dict(self, state: Any) -> None:
        pass


class Checkpointer:
    def __init__(self, writer: CheckpointWriter, settings: CheckpointConfig, dist: Collectives, device: torch.device, horizon: int) -> None:
        self.writer, self.settings, self.dist, self.device = writer, settings, dist, device
        self.horizon = horizon  # the LR schedule's horizon (frozen on resume)
        self._environment: dict[str, Any] | None = None  # taken at the first save, when every package in use is imported
        self.last: Path | None = None  # the newest periodic checkpoint of this process
        self._parts: list[_Part] = []
        self._clock = time.monotonic()
        self._best: tuple[dict[str, Any] | None, int, Callable[[dict[str, Any]], None] | None] | None = None
        self.saves, self.seconds = 0, 0.0  # files written and seconds spent on them in the training thread (rank 0)

    def register(
        self,
        key: str,
        obj: Stateful | None,
        *,
        per_rank: bool = False,
        collective: bool = False,
        spans: tuple[str, ...] | None = None,
        merge: Callable[[list[Any], bool], Any] | None = None,
    ) -> None:
        """Add a part saved under `key` (None stays None, e.g. no scheduler)."""
        self._parts.append(_Part(key, obj, per_rank, collective, spans or (key,), merge))

    # -- cadence -----------------------------------------------------------------------------
    def due(self, step: int, epoch_end: bool) -> bool:
        """A step- or epoch-based save is due (the clock is checked separately: it needs the ranks to agree)."""
        every = self.settings.every_n_steps
        return (every is not None and step % every == 0) or (epoch_end and self.settings.every_epoch)

    def clock_due(self) -> bool:
        """checkpoint.every_n_minutes has passed since the last save, by rank 0's clock (reduce over ranks)."""
        minutes = self.settings.every_n_minutes
        return minutes is not None and self.dist.is_main and time.monotonic() - self._clock >= minutes * 60

    def saved_at(self, step: int) -> bool:
        return self.last is not None and self.last.name == checkpoint_name(step)

    # -- writing -----------------------------------------------------------------------------
    def state(self, with_ranks: bool = True) -> dict[str, Any]:
        """Everything the continuation depends on, as tensors and plain data (complete on rank 0 only)."""
        mine = {p.key: _state(p) for p in self._parts if p.per_rank}
        # Every rank's generators (dropout differs per rank) and running sums, for an exact W-process resume.
        ranks = self.dist.gather_object(mine) if with_ranks and self.dist.enabled else None
        out: dict[str, Any] = {"format": FORMAT}
        for p in self._parts:
            if p.per_rank or not (p.collective or self.dist.is_main):
                continue
            value = _state(p)
            out.update(value if len(p.spans) > 1 else {p.key: value})
        return (
            out
            | mine
            | {
                "world_size": self.dist.world_size,
                "schedule_total_steps": self.horizon,
                "num_threads": torch.get_num_threads(),
                "environment": self.environment(),  # what bit-exactness relies on (checkpoint/environment.py)
                "ranks": ranks,  # per-rank state of multi-process runs, in rank order
            }
        )

    def environment(self) -> dict[str, Any]:
        if self._environment is None:
            self._environment = numerics_environment(self.device, self.dist.world_size)
        return self._environment

    def save(self, step: int) -> Path:
        """A periodic checkpoint: state from every rank, written by rank 0 (after a kept best state, see `write_best`)."""
        self.write_best()
        with self._timed():
            state = self.state()

            def write() -> None:
                self.last = self.writer.save(state, step)

            self.write_on_main(f"checkpoint at step {step}", write)
        self.last = self.writer.dir / checkpoint_name(step)
        self._clock = time.monotonic()
        return self.last

    def save_best(self, step: int, weights: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Keep the state as the best one (a host copy, on rank 0); `write_best` writes it as best.pt and,
        through `weights(state)`, best.safetensors. Every rank calls it: gathering FSDP state is a collective."""
        with self._timed():
            state = self.state(with_ranks=False)
            copy = snapshot(state) if self.dist.is_main else None  # training goes on changing the live tensors
        self._best = (copy, step, weights)

    def write_best(self) -> None:
        """Write a best state kept by `save_best`, if any (every rank calls it: rank 0 writes)."""
        if self._best is None:
            return
        state, step, weights = self._best
        self._best = None

        def write() -> None:
            assert state is not None
            if weights is not None:
                weights(state)
            self.writer.save_best(state, step)

        with self._timed():
            self.write_on_main("the best checkpoint", write)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """Count the training thread's time in checkpointing (`seconds`; run.json reports its share of the run)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

    def write_on_main(self, what: str, write: Callable[[], None]) -> None:
        """Rank 0 writes; a failure stops every rank (the all-reduce doubles as the save barrier)."""
        error = None
        if self.dist.is_main:
            try:
                with self.guard(what):
                    write()
                    self.saves += 1
            except TrainingAborted as exc:
                error = exc
        if not self.dist.all_ranks(error is None, self.device):
            raise error or TrainingAborted(f"rank 0 could not write the {what}")

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """A failed write (disk full, I/O error) stops the run; the previous checkpoint stays usable."""
        try:
            yield
        except OSError as exc:
            kept = self.writer.latest_valid()
            where = f"the previous checkpoint is intact: {kept.path}" if kept else "no earlier checkpoint exists"
            raise TrainingAborted(
                f"could not write {what} ({exc.strerror or exc}); {where}. "
                f"Free space or fix the file system, then resume with: taktstock train --resume {self.writer.dir.parent}"
            ) from None

    def flush(self) -> None:
        """Wait for a background write (checkpoint.async_write); its failure aborts the run."""
        try:
            self.writer.wait()
        except OSError as exc:
            kept = self.writer.latest_valid()
            raise TrainingAborted(
                f"could not write checkpoint ({exc.strerror or exc}); the previous checkpoint is intact: {kept.path if kept else 'none'}"
            ) from None

    def settle(self) -> None:
        """On any exit: a background write finishes before the process may end (its error was reported or is moot)."""
        with contextlib.suppress(OSError):
            self.writer.wait()

    # -- reading -----------------------------------------------------------------------------
    def restore(self, ckpt: dict[str, Any]) -> None:
        for p in self._parts:
            if not p.per_rank and p.obj is not None:
                value = {k: ckpt[k] for k in p.spans} if len(p.spans) > 1 else ckpt.get(p.key)
                if value is not None:
                    p.obj.load_state_dict(value)
        per_rank = [p for p in self._parts if p.per_rank]
        ranks = ckpt.get("ranks") or [{p.key: ckpt[p.key] for p in per_rank}]
        for p in per_rank:
            if len(ranks) == self.dist.world_size:
                value = ranks[self.dist.rank][p.key]
            else:  # a forced resume with another world size
                value = p.merge([r[p.key] for r in ranks], self.dist.is_main) if p.merge else ckpt[p.key]
            if p.obj is not None:
                p.obj.load_state_dict(value)
        note = resume_note(ckpt.get("environment"), numerics_environment(self.device, self.dist.world_size))
        if note and self.dist.is_main:
            print(note, file=sys.stderr)
        threads = ckpt.get("num_threads")
        if threads is not None and threads != torch.get_num_threads():
            print(
                f"warning: the checkpoint was written with {threads} intra-op threads, this process uses "
                f"{torch.get_num_threads()}; CPU results can differ in the last bits (set OMP_NUM_THREADS={threads} for an exact resume)",
                file=sys.stderr,
            )


def _state(p: _Part) -> Any:
    return p.obj.state_dict() if p.obj is not None else None


def check_resume_world_size(name: str, written: int, now: int, force: bool) -> None:
    """Exact resume needs the world size the checkpoint was written with (the one check, for train and launch)."""
    if written != now and not force:
        raise ConfigError(
            f"--resume: {name} was written by {written} process(es), this run has {now}; "
            "exact resume needs the same world size (use --force to continue anyway)"
        )


def find_resume(writer: CheckpointWriter, root: Path, dist: Collectives, force: bool) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, state) of the newest valid checkpoint in `root`'s checkpoints, checked for format and world size."""
    if not root.is_dir():
        raise ConfigError(f"--resume: run directory not found: {root}")
    if dist.is_main:
        removed = writer.prepare()
        if removed:
            print(f"removed {len(removed)} partial file(s) of an interrupted checkpoint write", file=sys.stderr)
    # Rank 0 picks the checkpoint for everyone: ranks must not disagree while a scan races a write.
    info = dist.broadcast_object(writer.latest_valid() if dist.is_main else None)
    if info is None:
        if dist.is_main:
            print(f"no valid checkpoint in {writer.dir}: starting {root} from the beginning", file=sys.stderr)
        return None, None
    state = load_checkpoint(info.path)
    missing = [k for k in REQUIRED if k not in state]
    if missing or state["format"] != FORMAT:
        raise CheckpointError(f"{info.path} is not a taktstock checkpoint of a supported format (missing: {', '.join(missing) or 'none'})")
    check_resume_world_size(info.path.name, state.get("world_size", 1), dist.world_size, force)
    return info.path, state


def schedule_horizon(total_steps: int, scheduler: str, ckpt: dict[str, Any] | None) -> int:
    """The LR schedule's horizon: this run's total steps, or on resume the original run's (announced when they differ)."""
    frozen = ckpt.get("schedule_total_steps") if ckpt else None
    if frozen is None:
        return total_steps
    if total_steps != frozen and scheduler in HORIZON_SCHEDULERS:
        beyond = f"; the {total_steps - frozen} step(s) beyond it keep the final learning rate" if total_steps > frozen else ""
        print(
            f"note: the run now has {total_steps} steps, the '{scheduler}' learning-rate schedule keeps its original horizon of {frozen} steps{beyond}",
            file=sys.stderr,
        )
    return frozen
