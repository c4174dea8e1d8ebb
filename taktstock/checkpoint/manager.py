"""CheckpointManager: writes verifiable checkpoints and finds the newest one that is intact.

Layout of RUN_DIR/checkpoints/:
    step-00000120.pt / .json   periodic checkpoints; the .json manifest holds the SHA-256 of the .pt
    last.pt / last.json        the newest periodic checkpoint (hard link)
    best.pt / best.json        the checkpoint with the best monitored metric

A checkpoint counts only once its manifest exists and the hash matches, so a file cut short by
a kill or a full disk is never loaded. Every file is replaced atomically (see `atomic`); the
manifest is the commit record:
  * new file: data first, manifest second; a kill in between leaves data without a manifest,
    which is ignored and removed on the next resume;
  * rewriting an existing file (best.pt, or the same step saved again): first a manifest that
    accepts both the old and the new hash, then the data, then the final manifest - so at every
    instant the file on disk matches its manifest.

Fault injection for the crash-safety tests (never set these in production):
    TAKTSTOCK_TEST_SLOW_CHECKPOINT_WRITE=SECONDS  sleep inside each checkpoint write (after the
        temporary file is durable but before its rename, and again before the manifest), so a
        test can kill the process while a checkpoint is being written;
    TAKTSTOCK_TEST_FAIL_CHECKPOINT_WRITE=N        the N-th checkpoint write of the process fails
        with OSError(ENOSPC), as on a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from taktstock.errors import CheckpointError
from taktstock.utils.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, remove_stale_temporaries

# The one definition of the periodic checkpoint file name (writers, readers and the trainer use these).
_PREFIX = "step-"
_PERIODIC = re.compile(rf"{_PREFIX}(\d+)\.json$")
_SLOW_ENV = "TAKTSTOCK_TEST_SLOW_CHECKPOINT_WRITE"
_FAIL_ENV = "TAKTSTOCK_TEST_FAIL_CHECKPOINT_WRITE"


def checkpoint_name(step: int) -> str:
    """File name of the periodic checkpoint after optimizer step `step`."""
    return f"{_PREFIX}{step:08d}.pt"


class CheckpointWriter(Protocol):
    """What the checkpointer writes through: CheckpointManager (synchronous) or AsyncCheckpointManager."""

    dir: Path

    def prepare(self) -> list[Path]: ...
    def save(self, state: dict[str, Any], step: int) -> Path: ...
    def save_best(self, state: dict[str, Any], step: int) -> Path: ...
    def wait(self) -> None: ...
    def latest_valid(self) -> CheckpointInfo | None: ...


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    sha256: str
    previous_sha256: str | None = None  # set only while the file is being replaced


class CheckpointManager:
    def __init__(self, directory: Path, keep_last: int = 3) -> None:
        self.dir = Path(directory)
        self.keep_last = keep_last
        self._writes = 0

    def prepare(self) -> list[Path]:
        """Create the directory and clear what an interrupted write left: temporaries and data without a manifest."""
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(self.dir)
        for data in self.dir.glob(f"{_PREFIX}*.pt"):
            if not data.with_suffix(".json").exists():
                data.unlink(missing_ok=True)
                removed.append(data)
        return removed

    # -- writing -----------------------------------------------------------------------------
    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write a periodic checkpoint, point `last` at it and prune old ones."""
        path = self.dir / checkpoint_name(step)
        self._write(path, state, step)
        self._link_last(path)
        self._prune()
        return path

    def save_best(self, state: dict[str, Any], step: int) -> Path:
        path = self.dir / "best.pt"
        self._write(path, state, step)
        return path

    def wait(self) -> None:
        """Synchronous writes are on disk when `save` returns: nothing to wait for."""

    def _write(self, path: Path, state: dict[str, Any], step: int) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()  # a view: no second copy of the serialised state
        digest = hashlib.sha256(data).hexdigest()
        manifest_path = path.with_suffix(".json")
        manifest = {"file": path.name, "sha256": digest, "size": len(data), "step": step}
        old = _read_manifest(manifest_path) if path.exists() else None
        if old is not None and old.sha256 != digest:
            # Replacing a committed file: accept both hashes while the data is swapped.
            atomic_write_text(manifest_path, json.dumps(manifest | {"previous_sha256": old.sha256}))
        atomic_write_bytes(path, data, before_replace=self._test_faults)
        self._test_slow()
        atomic_write_text(manifest_path, json.dumps(manifest))

    def _test_faults(self) -> None:
        self._writes += 1
        fail = os.environ.get(_FAIL_ENV)
        if fail and self._writes == int(fail):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._test_slow()

    @staticmethod
    def _test_slow() -> None:
        slow = os.environ.get(_SLOW_ENV)
        if slow:
            time.sleep(float(slow))

    def _link_last(self, path: Path) -> None:
        for suffix in (".pt", ".json"):
            src, dst = path.with_suffix(suffix), self.dir / f"last{suffix}"
            tmp = self.dir / f".tmp-last{suffix}"
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # Filesystems without hard links get a durable copy.
                with open(tmp, "wb") as f:
                    f.write(src.read_bytes())
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, dst)
        fsync_dir(self.dir)

    def _prune(self) -> None:
        for info in self.periodic()[self.keep_last :]:
            # Manifest first: a kill in between leaves an orphan data file, never a manifest without data.
            info.path.with_suffix(".json").unlink(missing_ok=True)
            info.path.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def periodic(self) -> list[CheckpointInfo]:
        """Periodic checkpoints with a manifest, newest first (not yet verified)."""
        found = []
        if not self.dir.is_dir():
            return found
        for manifest in self.dir.glob(f"{_PREFIX}*.json"):
            m = _PERIODIC.search(manifest.name)
            info = _read_manifest(manifest)
            if m and info:
                found.append(info)
        return sorted(found, key=lambda i: i.step, reverse=True)

    def latest_valid(self) -> CheckpointInfo | None:
        """The newest periodic checkpoint whose hash verifies; damaged newer ones are reported on stderr and skipped."""
        for info in self.periodic():
            problem = verify(info)
            if problem is None:
                return info
            print(f"warning: skipping damaged checkpoint {info.path}: {problem}; trying the previous one", file=sys.stderr)
        return None

    def best(self) -> CheckpointInfo | None:
        info = _read_manifest(self.dir / "best.json")
        return info if info and verify(info) is None else None


def _read_manifest(path: Path) -> CheckpointInfo | None:
    try:
        m = json.loads(path.read_text())
        return CheckpointInfo(path.with_name(m["file"]), int(m["step"]), m["sha256"], m.get("previous_sha256"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify(info: CheckpointInfo) -> str | None:
    """None if the file matches its manifest, else what is wrong."""
    try:
        data = info.path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if hashlib.sha256(data).hexdigest() not in (info.sha256, info.previous_sha256):
        return "content does not match its SHA-256 (truncated or corrupted)"
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with `weights_only=True`: tensors and plain data only; anything else is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain data ({first}). "
            "Checkpoints are loaded with torch.load(weights_only=True); never load files from untrusted sources otherwise."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
