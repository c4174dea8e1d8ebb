"""A bounded shard cache (`data.cache_limit`): least-recently-used eviction, safe across workers and runs.

Everything is in the files and kernel locks, so SIGKILLed holders leave nothing to clean up by hand:
- a reader holds a shared `flock` on a shard's read lock (`.locks/SPLIT.NAME.read`) while the shard is in its
  window (its block and the next one); an evictor removes a shard only under an exclusive lock taken without
  waiting, so a shard somebody reads is never removed, in this process or another;
- every download and eviction of a limited cache happens under one cache-wide lock (`.locks/cache.lock`): the
  size is summed, shards are evicted until the new one fits, then it is downloaded (a temporary name, then a
  rename). Eviction is one `unlink`, so a kill mid-eviction leaves the shard either whole or gone, and a
  killed download leaves only a temporary file, removed by the next download once its process is gone.

Downloads into a limited cache are serialised by the cache lock: correctness (the limit holds with any
number of workers and runs) before download parallelism.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

LOCKS = ".locks"
LOG_ENV = "TAKTSTOCK_MDS_CACHE_LOG"  # a file to append one JSON line per download and eviction (diagnostics)
_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # fetch()'s temporary names: .NAME.PID.tmp


def cache_bytes(root: Path) -> int:
    """Bytes of every file in the cache (shards, indexes, metadata, partial downloads), locks excluded."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and LOCKS in dirnames:
            dirnames.remove(LOCKS)
        for name in filenames:
            # (a file may go meanwhile: an unlimited run's temporary download)
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LimitedCache:
    """One process's view of a bounded cache directory: the read locks it holds, and downloads under the limit."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root, self.limit = Path(root), int(limit)
        self.locks = self.root / LOCKS
        self._held: dict[Path, int] = {}  # shard file -> fd of its shared read lock
        self._warned = False

    def _lock_file(self, shard: Path) -> Path:
        return self.locks / f"{shard.parent.name}.{shard.name}.read"

    def hold(self, shard: Path) -> None:
        """Keep `shard` from eviction (by anyone) until `release_except` drops it; marks it recently used."""
        if shard in self._held:
            return
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file(shard), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for an eviction in progress (one unlink)
        self._held[shard] = fd
        with contextlib.suppress(FileNotFoundError):
            os.utime(shard)  # mtime is the recency eviction orders by

    def release_except(self, keep: Iterable[Path]) -> None:
        keep = set(keep)
        for shard in [s for s in self._held if s not in keep]:
            os.close(self._held.pop(shard))  # closing the descriptor releases its flock

    def download(self, fetch_shard: Callable[[], object], shard: Path, size: int, protect: Iterable[Path]) -> None:
        """Make room for `size` bytes and run `fetch_shard()` (which writes `shard` atomically), under the cache lock."""
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks / "cache.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if shard.is_file():  # another worker or run fetched it while this one waited
                return
            self._remove_stale_downloads()
            excess = cache_bytes(self.root) + size - self.limit
            if excess > 0:
                excess -= self._evict(excess, {shard, *protect})
            if excess > 0 and not self._warned:
                self._warned = True
                warnings.warn(
                    f"data.cache_limit: {self.limit} bytes exceeded by {excess} bytes: every other shard is read right now "
                    "(more workers than the limit leaves room for; raise data.cache_limit)",
                    stacklevel=2,
                )
            fetch_shard()
            self._log("download", shard)
        finally:
            os.close(fd)

    def _evict(self, excess: int, protect: set[Path]) -> int:
        """Remove least recently used shards nobody holds until `excess` bytes are freed; returns the bytes freed."""
        candidates = []
        for path in self.root.glob("*/*.mds"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                candidates.append((st.st_mtime_ns, st.st_size, path))
        freed = 0
        for _, size, path in sorted(candidates):
            if freed >= excess:
                break
            if path in protect or path in self._held:
                continue
            fd = os.open(self._lock_file(path), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a reader holds it
                os.close(fd)
                continue
            try:
                path.unlink(missing_ok=True)
                freed += size
                self._log("evict", path)
            finally:
                os.close(fd)
        return freed

    def _remove_stale_downloads(self) -> None:
        """Temporary files of downloads whose process died (a SIGKILL mid-download)."""
        for path in self.root.glob("*/.*.tmp"):
            m = _TMP.match(path.name)
            if m and not _alive(int(m.group(1))):
                path.unlink(missing_ok=True)

    def _log(self, event: str, shard: Path) -> None:
        log = os.environ.get(LOG_ENV)
        if log:
            line = {"event": event, "file": f"{shard.parent.name}/{shard.name}", "bytes": cache_bytes(self.root), "limit": self.limit}
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")
