"""CheckpointManager: writes verifiable checkpoints and finds the newest one that is intact.

Layout of RUN_DIR/checkpoints/:
    step-00000120.pt / .json   periodic checkpoints; the .json manifest holds the SHA-256 of the .pt
    last.pt / last.json        the newest periodic checkpoint (hard link)
    best.pt / best.json        the checkpoint with the best monitored metric

A checkpoint counts only once its manifest exists and the hash matches, so a file cut short by
a kill or a full disk is never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taktstock.checkpoint.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, remove_stale_temporaries
from taktstock.errors import CheckpointError

_PERIODIC = re.compile(r"step-(\d+)\.json$")


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    sha256: str


class CheckpointManager:
    def __init__(self, directory: Path, keep_last: int = 3) -> None:
        self.dir = Path(directory)
        self.keep_last = keep_last

    def prepare(self) -> None:
        """Create the directory and clear temporaries of an interrupted write."""
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dir)

    # -- writing -----------------------------------------------------------------------------
    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write a periodic checkpoint, point `last` at it and prune old ones."""
        path = self.dir / f"step-{step:08d}.pt"
        self._write(path, state, step)
        self._link_last(path)
        self._prune()
        return path

    def save_best(self, state: dict[str, Any], step: int) -> Path:
        path = self.dir / "best.pt"
        self._write(path, state, step)
        return path

    def _write(self, path: Path, state: dict[str, Any], step: int) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        # Data first, manifest second: a kill in between leaves a .pt without manifest, which is ignored.
        atomic_write_bytes(path, data)
        manifest = {"file": path.name, "sha256": digest, "size": len(data), "step": step}
        atomic_write_text(path.with_suffix(".json"), json.dumps(manifest))

    def _link_last(self, path: Path) -> None:
        for suffix in (".pt", ".json"):
            src, dst = path.with_suffix(suffix), self.dir / f"last{suffix}"
            tmp = self.dir / f".tmp-last{suffix}"
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # Filesystems without hard links get a copy.
                tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)
        fsync_dir(self.dir)

    def _prune(self) -> None:
        for info in self.periodic()[self.keep_last :]:
            info.path.with_suffix(".json").unlink(missing_ok=True)
            info.path.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def periodic(self) -> list[CheckpointInfo]:
        """Periodic checkpoints with a manifest, newest first (not yet verified)."""
        found = []
        if not self.dir.is_dir():
            return found
        for manifest in self.dir.glob("step-*.json"):
            m = _PERIODIC.search(manifest.name)
            info = _read_manifest(manifest)
            if m and info:
                found.append(info)
        return sorted(found, key=lambda i: i.step, reverse=True)

    def latest_valid(self) -> CheckpointInfo | None:
        """The newest periodic checkpoint whose hash verifies; damaged newer ones are reported and skipped."""
        for info in self.periodic():
            problem = verify(info)
            if problem is None:
                return info
            warnings.warn(f"skipping damaged checkpoint {info.path.name}: {problem}", stacklevel=2)
        return None

    def best(self) -> CheckpointInfo | None:
        info = _read_manifest(self.dir / "best.json")
        return info if info and verify(info) is None else None


def _read_manifest(path: Path) -> CheckpointInfo | None:
    try:
        m = json.loads(path.read_text())
        return CheckpointInfo(path.with_name(m["file"]), int(m["step"]), m["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify(info: CheckpointInfo) -> str | None:
    """None if the file matches its manifest, else what is wrong."""
    try:
        data = info.path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if hashlib.sha256(data).hexdigest() != info.sha256:
        return "content does not match its SHA-256 (truncated or corrupted)"
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with `weights_only=True`: tensors and plain data only; anything else is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(f"refusing to load {path}: it contains objects other than tensors and plain data ({first})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
