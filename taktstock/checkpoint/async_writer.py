"""Checkpoint writes on a background thread (checkpoint.async_write).

`save()` takes a snapshot of the state (one host copy of every tensor storage, sharing preserved)
and returns; serialising, hashing, writing and fsync-ing happen on a writer thread while training
continues. At most one write is in flight: the next save waits for the previous one, and a write
error is raised (as OSError naming its step) by the next `save()`, `wait()` or `close()`.
The files are the same as a synchronous CheckpointManager writes: atomic data file, then manifest.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from taktstock.checkpoint.manager import CheckpointInfo, CheckpointManager, checkpoint_name


def snapshot(state: Any) -> Any:
    """A deep copy of `state` whose tensors live in (pinned, when copied from CUDA) host memory.

    Storages are copied once and views re-created on the copies, so tensors that shared storage
    still do (torch.save writes the same bytes a synchronous save of the original would)."""
    storages: dict[tuple[str, int], torch.UntypedStorage] = {}
    cuda = False

    def copy(obj: Any) -> Any:
        nonlocal cuda
        if isinstance(obj, torch.Tensor):
            src = obj.untyped_storage()
            key = (str(obj.device), src.data_ptr())
            if key not in storages:
                on_cuda = obj.device.type == "cuda"
                cuda = cuda or on_cuda
                dst = torch.empty(src.nbytes(), dtype=torch.uint8, pin_memory=on_cuda).untyped_storage()
                dst.copy_(src, non_blocking=on_cuda)
                storages[key] = dst
            return torch.empty(0, dtype=obj.dtype).set_(storages[key], obj.storage_offset(), obj.size(), obj.stride())
        if isinstance(obj, dict):
            # Same mapping type and attributes: a module state dict is an OrderedDict carrying `_metadata`
            # (per-module versions that load_state_dict uses), and torch.save records both.
            out = type(obj)() if type(obj) in (dict, OrderedDict) else {}
            for k, v in obj.items():
                out[k] = copy(v)
            if hasattr(obj, "_metadata"):
                out._metadata = obj._metadata  # type: ignore[attr-defined]
            return out
        if isinstance(obj, list):
            return [copy(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(copy(v) for v in obj)
        return obj

    out = copy(state)
    if cuda:
        torch.cuda.synchronize()  # the non-blocking device-to-host copies must land before the writer reads them
    return out


class AsyncCheckpointManager:
    """A CheckpointManager whose `save`/`save_best` write in the background (same files, same manifests)."""

    def __init__(self, inner: CheckpointManager) -> None:
        self.inner = inner
        self.dir, self.keep_last = inner.dir, inner.keep_last
        self._thread: threading.Thread | None = None
        self._error: tuple[int, BaseException] | None = None

    # -- writing -----------------------------------------------------------------------------
    def save(self, state: dict[str, Any], step: int) -> Path:
        self._submit(self.inner.save, state, step)
        return self.dir / checkpoint_name(step)

    def save_best(self, state: dict[str, Any], step: int) -> Path:
        # A failed earlier write stays pending for the next save()/wait(), where the trainer reports it
        # as a checkpoint failure; the best checkpoint is not written over a failing disk meanwhile.
        self._join()
        if self._error is None:
            self._submit(self.inner.save_best, state, step)
        return self.dir / "best.pt"

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _submit(self, write: Any, state: dict[str, Any], step: int) -> None:
        self.wait()
        snap = snapshot(state)

        def run() -> None:
            try:
                write(snap, step)
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = (step, exc)

        self._thread = threading.Thread(target=run, name=f"checkpoint-step-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error, if any."""
        self._join()
        if self._error is not None:
            step, exc = self._error
            self._error = None
            if isinstance(exc, OSError):
                raise OSError(exc.errno, f"{exc.strerror or exc} (background write of the step-{step} checkpoint)") from exc
            raise exc

    def close(self) -> None:
        self.wait()

    # -- reading (after pending writes) -----------------------------------------------------------
    def prepare(self) -> list[Path]:
        return self.inner.prepare()

    def periodic(self) -> list[CheckpointInfo]:
        self._quiet_wait()
        return self.inner.periodic()

    def latest_valid(self) -> CheckpointInfo | None:
        self._quiet_wait()
        return self.inner.latest_valid()

    def best(self) -> CheckpointInfo | None:
        self._quiet_wait()
        return self.inner.best()

    def _quiet_wait(self) -> None:
        # The caller is inspecting what is on disk, typically while reporting that very error.
        with contextlib.suppress(OSError):
            self.wait()
