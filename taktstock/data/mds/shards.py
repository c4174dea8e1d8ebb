"""One split's MDS shards, read by random access with `streaming`'s own index, readers and downloaders.

The order of samples is taktstock's (`EpochBatchSampler`), so nothing here shuffles, partitions or
keeps epoch state: `sample(i)` finds the shard holding sample i, downloads it into the local cache when a
remote is set and it is not there yet, and decodes the sample. `streaming.StreamingDataset` is not used:
its shard-state registry lives in named shared memory keyed by the local directory, which a SIGKILL leaves
behind (the next run with the same cache then refuses to start) and which a second concurrent run with the
same cache is refused by. Here the state is the files themselves: a shard is in the cache exactly when its
file exists (downloads land under a temporary name and are renamed), and a per-shard file lock (an
`flock`, released by the kernel when its holder dies) makes concurrent workers and runs download it once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index.json"  # streaming's per-split index of shards
LOCKS = ".locks"  # per-shard download locks, in the cache directory
DOWNLOAD_TIMEOUT_S = 60.0


def remote_join(remote: str, *parts: str) -> str:
    return "/".join([remote.rstrip("/"), *parts])


def fetch(remote: str, local: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download `remote` to `local` unless it is there; atomic (a temporary name, then a rename), so a kill or a
    concurrent download never leaves a partial file under the final name."""
    from streaming.base.storage import CloudDownloader

    if local.is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    CloudDownloader.direct_download(remote, str(tmp), timeout)
    os.replace(tmp, local)
    return local


class SplitShards:
    """The shards of one split (`root/split/index.json` + shard files), opened lazily in each process.

    Pickling (to DataLoader workers) sends the paths only; each process builds its own readers.
    """

    def __init__(self, root: Path, split: str, remote: str | None, cache_limit: int | None = None) -> None:
        self.root, self.split, self.remote, self.cache_limit = Path(root), split, remote, cache_limit
        self._state: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    @property
    def index_path(self) -> Path:
        return self.root / self.split / INDEX

    def ensure_index(self) -> None:
        """The split's index in the local directory (downloaded once from the remote when there is one)."""
        if self.remote is not None:
            fetch(remote_join(self.remote, self.split, INDEX), self.index_path)

    def _open(self) -> dict[str, Any]:
        if self._state is None:
            from streaming.base.format import reader_from_json
            from streaming.base.stream import Stream

            self.ensure_index()
            stream = Stream(remote=self.remote and remote_join(self.remote, self.split), local=str(self.root / self.split))
            stream.apply_default(
                {"split": None, "download_retry": 2, "download_timeout": DOWNLOAD_TIMEOUT_S, "validate_hash": None, "keep_zip": False}
            )
            index = json.loads(self.index_path.read_text())
            # allow_unsafe_types=False: a shard with pickled columns is refused (it could run code when read).
            shards = [reader_from_json(str(self.root / self.split), None, info) for info in index["shards"]]
            for shard in shards:
                shard.validate(False)
            counts = np.array([shard.samples for shard in shards], np.int64)
            self._state = {"stream": stream, "shards": shards, "ends": np.cumsum(counts), "present": set(), "window": None}
            if self.remote is not None and self.cache_limit is not None:
                from taktstock.data.mds.cache import LimitedCache

                self._state["cache"] = LimitedCache(self.root, self.cache_limit)
        return self._state

    def __len__(self) -> int:
        ends = self._open()["ends"]
        return int(ends[-1]) if len(ends) else 0

    @property
    def ends(self) -> np.ndarray:
        """Cumulative sample counts of the shards (from the index: nothing is downloaded)."""
        return self._open()["ends"]

    def shard_of(self, index: int) -> int:
        return int(np.searchsorted(self.ends, index, side="right"))  # ends are cumulative sample counts

    def sample(self, index: int, window: tuple[int, frozenset[int]] | None = None) -> dict[str, Any]:
        """The decoded columns of sample `index` (0 <= index < len), its shard downloaded first if needed.

        `window` (a key, shard ids): the shards this reader needs now and next; with a cache limit they are
        kept from eviction, and shards outside the window are released (evictable) when the key changes."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        st = self._open()
        shard_id = self.shard_of(index)
        first = int(st["ends"][shard_id - 1]) if shard_id else 0
        if "cache" in st:
            self._hold(st, shard_id, window or (-1 - shard_id, frozenset({shard_id, shard_id + 1})))
        elif self.remote is not None and shard_id not in st["present"]:
            self._download(st, shard_id)
            st["present"].add(shard_id)
        try:
            return st["shards"][shard_id][index - first]
        except FileNotFoundError:
            if self.remote is None or "cache" in st:
                raise  # a held shard is never evicted; a local directory has nothing to download
            # Evicted by a concurrent run with a cache limit since this process saw it: fetch it again.
            self._download(st, shard_id)
            return st["shards"][shard_id][index - first]

    def _raw(self, st: dict[str, Any], shard_id: int) -> Path:
        return self.root / self.split / st["shards"][shard_id].file_pairs[0][0].basename

    def _hold(self, st: dict[str, Any], shard_id: int, window: tuple[int, frozenset[int]]) -> None:
        """Limited cache: hold the shard's read lock (its window's shards protected), downloading it if absent.

        A held shard cannot be evicted, so it is checked for (and fetched) once per window, not per sample."""
        cache, n = st["cache"], len(st["shards"])
        key, ids = window
        if key != st["window"]:
            st["protect"] = [self._raw(st, s) for s in ids if 0 <= s < n]
            cache.release_except(st["protect"])
            st["present"] &= {s for s in ids if 0 <= s < n}
            st["window"] = key
        if shard_id in st["present"]:
            return
        raw = self._raw(st, shard_id)
        cache.hold(raw)
        if not raw.is_file():
            shard = st["shards"][shard_id]
            assert self.remote is not None  # a cache limit applies to a remote's cache only
            url = remote_join(self.remote, self.split, raw.name)
            cache.download(lambda: fetch(url, raw), raw, int(shard.file_pairs[0][0].bytes), st["protect"])
        st["present"].add(shard_id)

    def _download(self, st: dict[str, Any], shard_id: int) -> None:
        from filelock import FileLock

        shard = st["shards"][shard_id]
        raw = self.root / self.split / shard.file_pairs[0][0].basename
        if raw.is_file():
            return
        locks = self.root / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{self.split}.{raw.name}.lock")):
            if not raw.is_file():  # another worker or run may have fetched it while this one waited
                st["stream"].prepare_shard(shard)
