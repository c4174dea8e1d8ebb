"""The background uploader of a run in object storage, and training in the local mirror of a URL.

After each checkpoint save the uploader copies, in this order: the run's files that changed (config.yaml,
run.json, metrics.jsonl, best.safetensors, ... see location.RUN_FILES), best.pt then best.json, the
checkpoint's data, then its manifest LAST; then it prunes the remote to `checkpoint.keep_last` (manifest
before data, as locally). A kill at any moment leaves the remote with complete checkpoints plus at most one
data file without a manifest, which a download never takes. metrics.jsonl is uploaded before the manifest,
so a remote checkpoint's `metrics_offset` never points past the remote metrics file.

Uploads run on one thread while training goes on; at most one checkpoint upload is pending (the next
save waits for it, as with checkpoint.async_write), so every checkpoint reaches the bucket. A failed
upload is reported (once per file) and the next checkpoint tries again; the run waits for pending uploads
at its end, also when preempted or failed, and a finished run whose final upload failed exits 1 naming
the URL (the same command again uploads it: a relaunched finished run sends what the bucket lacks).

Fault injection for tests (never set in production):
    TAKTSTOCK_TEST_BLOCK_UPLOAD=STEP  the upload of the first checkpoint at or after STEP stops for good after
        its data file and before its manifest, printing "test: upload of step-N blocked" to stderr;
    TAKTSTOCK_TEST_FAIL_UPLOAD=1      every upload and remote delete fails (OSError EACCES), as on a bucket
        that stopped accepting writes after the start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taktstock.checkpoint.manager import CheckpointManager
from taktstock.errors import TrainingAborted
from taktstock.remote.location import RUN_FILES, RemoteRun, is_url

_BLOCK_ENV = "TAKTSTOCK_TEST_BLOCK_UPLOAD"
_FAIL_ENV = "TAKTSTOCK_TEST_FAIL_UPLOAD"
_ACTIVE: dict[Path, Uploader] = {}  # local mirror root -> its uploader (rank 0 of a run at a URL)


class Uploader:
    """One thread that mirrors a local run directory to its URL, in commit order."""

    def __init__(self, remote: RemoteRun, keep_last: int = 3) -> None:
        self.remote, self.local, self.keep_last = remote, remote.local, keep_last
        self.errors: dict[str, str] = {}  # remote file -> last error (cleared by a later success)
        self._sent: dict[str, tuple[int, int]] = {}  # local file -> (size, mtime_ns) last uploaded
        for rel in remote.pulled:  # just downloaded: the remote has them (a relaunched finished run uploads nothing)
            with contextlib.suppress(OSError):
                stat = (self.local / rel).stat()
                self._sent[rel] = (stat.st_size, stat.st_mtime_ns)
            if rel.startswith("checkpoints/") and rel.endswith(".json"):
                with contextlib.suppress(OSError):
                    manifest = (self.local / rel).read_bytes()
                    self._sent[f"{rel}#"] = (len(manifest), hash(manifest))
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="run-upload", daemon=True)
        self._thread.start()

    # -- the training thread's side ----------------------------------------------------------
    def checkpoint_saved(self, path: Path) -> None:
        self._queue.put(lambda: self._checkpoint(path))

    def drain(self) -> None:
        """Wait until every queued upload is done (the next checkpoint waits for the previous one's upload)."""
        self._queue.join()

    def finish(self) -> dict[str, str]:
        """Upload the run's final files, wait for everything pending, stop the thread; the failures left."""
        self._queue.put(self._final)
        self._queue.put(None)
        self._thread.join()
        return self.errors

    # -- the upload thread -------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                job()
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _attempt(self, rel: str, upload: Callable[[], None]) -> bool:
        try:
            if os.environ.get(_FAIL_ENV):
                raise OSError(errno.EACCES, "Access Denied (test fault)")
            upload()
        except Exception as exc:  # every backend raises its own types; the next checkpoint retries
            if rel not in self.errors:
                print(
                    f"warning: could not upload {rel} to {self.remote.shown} ({self.remote.reason(exc)}); retrying later", file=sys.stderr
                )
            self.errors[rel] = self.remote.reason(exc)
            return False
        self.errors.pop(rel, None)
        return True

    def _put(self, rel: str, expect: str | None = None) -> bool:
        """Upload RUN_DIR/rel from an open handle (a concurrent atomic replace cannot mix two versions);
        with `expect`, only if its SHA-256 is that (else it is being rewritten: a later job sends it)."""
        local = self.local / rel
        try:
            f = open(local, "rb")  # noqa: SIM115 (closed by the `with f` below; a missing file is skipped)
        except FileNotFoundError:
            return False
        with f:
            stat = os.fstat(f.fileno())
            if expect is None and self._sent.get(rel) == (stat.st_size, stat.st_mtime_ns):
                return True  # unchanged since its last upload
            if expect is not None:
                h = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                if h.hexdigest() != expect:
                    return False
                f.seek(0)

            def upload() -> None:
                with self.remote.fs.open(self.remote.remote(rel), "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)

            ok = self._attempt(rel, upload)
        if ok:
            self._sent[rel] = (stat.st_size, stat.st_mtime_ns)
        return ok

    def _put_bytes(self, rel: str, data: bytes) -> bool:
        return self._attempt(rel, lambda: self.remote.fs.pipe_file(self.remote.remote(rel), data))

    def _run_files(self) -> None:
        for rel in RUN_FILES:
            self._put(rel)
        self._committed("checkpoints/best")
        for folder in ("eval", "plots"):
            if (self.local / folder).is_dir():
                for path in sorted(p for p in (self.local / folder).rglob("*") if p.is_file()):
                    self._put(path.relative_to(self.local).as_posix())

    def _final(self) -> None:
        """The end of the run: its files, and the kept checkpoints an earlier failure or run left unsent."""
        self._run_files()
        periodic = CheckpointManager(self.local / "checkpoints").periodic()[: self.keep_last]
        sent = [self._committed(f"checkpoints/{info.path.stem}") for info in reversed(periodic)]  # the newest last
        if periodic and all(sent):
            self._prune(periodic[0].step)

    def _committed(self, stem: str) -> bool:
        """Upload <stem>.pt when it matches <stem>.json, then that manifest (the commit record) last."""
        try:
            manifest = (self.local / f"{stem}.json").read_bytes()
            sha = json.loads(manifest)["sha256"]
        except (OSError, ValueError, KeyError):
            return False
        if self._sent.get(f"{stem}.json#") == (len(manifest), hash(manifest)):
            return True  # this exact checkpoint is already up
        if not self._put(f"{stem}.pt", expect=sha):
            return False
        _test_block(stem)
        if self._put_bytes(f"{stem}.json", manifest):
            self._sent[f"{stem}.json#"] = (len(manifest), hash(manifest))
            return True
        return False

    def _checkpoint(self, path: Path) -> None:
        self._run_files()  # metrics.jsonl before the manifest: its offset in the checkpoint is then always covered
        if self._committed(f"checkpoints/{path.stem}"):
            self._prune(int(path.stem.split("-")[1]))

    def _prune(self, newest: int) -> None:
        """Keep the `keep_last` newest complete remote checkpoints; drop data without a manifest below `newest`,
        and checkpoints above it that this run does not have (an earlier run's, replaced or never completed)."""
        local = {i.step for i in CheckpointManager(self.local / "checkpoints").periodic()}
        manifests, data = self.remote.manifests(), self.remote.data_files()
        stale = {s for s in manifests if s > newest and s not in local}
        kept = sorted((s for s in manifests if s not in stale), reverse=True)
        fs = self.remote.fs
        for step in sorted(stale) + kept[self.keep_last :]:
            # Manifest first: a kill in between leaves data without a manifest, never a manifest without data.
            self._attempt(f"checkpoints/step-{step:08d}.json", lambda s=step: fs.rm_file(manifests[s]))
            if step in data:
                self._attempt(f"checkpoints/step-{step:08d}.pt", lambda s=step: fs.rm_file(data[s]))
        for step, name in data.items():
            if step not in manifests and step < newest:
                self._attempt(f"checkpoints/step-{step:08d}.pt", lambda n=name: fs.rm_file(n))


def _test_block(stem: str) -> None:
    block = os.environ.get(_BLOCK_ENV)
    if block and stem.startswith("checkpoints/step-") and int(stem.split("-")[1]) >= int(block):
        print(f"test: upload of {stem.split('/')[1]} blocked", file=sys.stderr, flush=True)
        threading.Event().wait()


class UploadingCheckpointManager(CheckpointManager):
    """A CheckpointManager whose periodic saves are handed to the uploader once on local disk."""

    def __init__(self, directory: Path, keep_last: int, uploader: Uploader) -> None:
        super().__init__(directory, keep_last)
        self.uploader = uploader

    def save(self, state: dict[str, Any], step: int) -> Path:
        # At most one checkpoint upload in flight: a slow bucket slows the saves instead of piling up a queue,
        # and local pruning never deletes a checkpoint before it is uploaded.
        self.uploader.drain()
        path = super().save(state, step)
        self.uploader.checkpoint_saved(path)
        return path


def checkpoint_manager(directory: Path, keep_last: int) -> CheckpointManager:
    """The manager for RUN_DIR/checkpoints: it uploads when RUN_DIR is the mirror of a run at a URL."""
    uploader = _ACTIVE.get(Path(directory).parent.resolve())
    return UploadingCheckpointManager(directory, keep_last, uploader) if uploader else CheckpointManager(directory, keep_last)


def train_in_mirror(train: Callable[..., Any], config: Any, overrides: Any, run_dir: Any, resume: Any, **kwargs: Any) -> Any:
    """`train` on the local mirror of the URL `run_dir`/`resume`: checked writable, pulled up to the newest
    complete checkpoint, uploaded as it goes (rank 0), and waited for at the end."""
    url = str(resume if is_url(resume) else run_dir)
    remote = RemoteRun(url)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        remote.probe()  # before anything is written: a missing bucket is exit 2 naming the URL
        if kwargs.get("overwrite") and remote.clear():  # as the local run is cleared: nothing of the old run may be resumed
            print(f"note: --overwrite: deleted the earlier run at {remote.shown}", file=sys.stderr)
    local = remote.pull()
    keep_last = _keep_last(config, overrides, local)
    uploader = None
    if main:
        print(f"run directory: {remote.shown} (local mirror: {local})", file=sys.stderr)
        uploader = _ACTIVE[local.resolve()] = Uploader(remote, keep_last)
    failed = True
    try:
        result = train(
            config, overrides, run_dir=local if is_url(run_dir) else run_dir, resume=local if is_url(resume) else resume, **kwargs
        )
        failed = False
    finally:
        if uploader is not None:
            del _ACTIVE[local.resolve()]
            errors = uploader.finish()
            if errors:
                failures = [f"{rel}: {err}" for rel, err in sorted(errors.items())]
                detail = "; ".join(failures[:2]) + (f"; and {len(failures) - 2} more file(s)" if len(failures) > 2 else "")
                message = f"uploading the run to {remote.shown} failed ({detail}); the local mirror {local} holds it"
                if failed:
                    print(f"error: {message}", file=sys.stderr)
                else:
                    raise TrainingAborted(f"{message}; launch the same command again to upload it")
            else:
                print(f"uploaded the run to {remote.shown}", file=sys.stderr)
    return result


def _keep_last(config: Any, overrides: Any, local: Path) -> int:
    """checkpoint.keep_last of the run (the mirror's config for a resume without a config file)."""
    from taktstock.config.loader import load_config
    from taktstock.config.schema import Config

    if isinstance(config, Config):
        return config.checkpoint.keep_last
    try:
        source = config if config is not None else local / "config.yaml"
        return load_config(source, overrides).checkpoint.keep_last
    except Exception:  # the training itself reports a bad config, with the right message
        return 3
