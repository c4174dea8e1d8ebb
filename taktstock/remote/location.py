"""A run directory at a URL (`s3://bucket/prefix/run`, `gs://...`, `az://...`, any fsspec URL) and its local mirror.

Training, evaluation and prediction work on a local directory exactly as they do without object storage;
this module decides where that mirror lives, checks the bucket can be written, and downloads what a
process needs: the run's files and its newest *complete* checkpoint (manifest present, SHA-256 verified).

The remote holds the local layout (see run_dir.py) under the URL. A checkpoint counts remotely, as locally,
only once its manifest (`step-N.json`) exists: the uploader writes it after the data (see sync.py).

Mirror location: $TAKTSTOCK_RUN_CACHE/<name>-<hash of the URL>, default ~/.cache/taktstock/runs/ (or
$XDG_CACHE_HOME/taktstock/runs/). Credentials and endpoints come from the storage library's own
environment and config files (for S3: AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL, ~/.aws/...); URLs
are printed without user info or query string, which may carry secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from taktstock.checkpoint.manager import CheckpointInfo, CheckpointManager, checkpoint_name
from taktstock.errors import ConfigError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_STEP_MANIFEST = re.compile(r"step-(\d+)\.json$")
CACHE_ENV = "TAKTSTOCK_RUN_CACHE"
# The run's files besides checkpoints (run_dir.py), uploaded when they change and downloaded with the run.
RUN_FILES = (
    "config.yaml",
    "preprocessing.json",
    "tokenizer.json",
    "run.json",
    "metrics.jsonl",
    "samples.jsonl",
    "best.safetensors",
    "model.safetensors",
    "ema.safetensors",
)
# fsspec protocol -> the taktstock extra that installs its implementation.
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


def is_url(value: object) -> bool:
    """True for `scheme://...` strings (a run directory in object storage); local paths are not URLs."""
    return isinstance(value, str) and bool(_URL.match(value))


def redact(url: str) -> str:
    """The URL without password, query or fragment (they may hold credentials or SAS tokens): safe to print.
    A user name stays (abfs://container@account... names the container there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{parts.path}"


def mirror_dir(url: str) -> Path:
    """The local mirror of the run at `url` ($TAKTSTOCK_RUN_CACHE, default ~/.cache/taktstock/runs)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taktstock" / "runs")
    clean = redact(url).rstrip("/")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", clean.rsplit("/", 1)[-1]) or "run"
    return Path(base).expanduser() / f"{name}-{hashlib.sha256(clean.encode()).hexdigest()[:12]}"


class RemoteRun:
    """The run at `url`: its filesystem, the path under it, and the local mirror."""

    def __init__(self, url: str, local: Path | None = None) -> None:
        self.url, self.shown = url, redact(url)
        self.local = local or mirror_dir(url)
        if urlsplit(url).password is not None:
            raise ConfigError(
                f"--run-dir {self.shown}: credentials in the URL are not accepted (they would end up in logs and process "
                "lists); give them through the storage library's environment or config files (for S3: AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
            )
        try:
            from fsspec.core import url_to_fs

            self.fs, path = url_to_fs(url)
        except ImportError as exc:
            extra = _EXTRAS.get(url.split("://", 1)[0].lower())
            hint = f"; install it with: pip install 'taktstock[{extra}]'" if extra else ""
            raise ConfigError(f"--run-dir {self.shown}: {exc}{hint}") from None
        except ValueError as exc:
            raise ConfigError(f"--run-dir {self.shown}: {exc}") from None
        self.root = path.rstrip("/")
        self.pulled: set[str] = set()  # files `pull` downloaded: the uploader need not send them back

    def remote(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def reason(self, exc: BaseException) -> str:
        """An error of the storage library in one line, the URL in it shown without its query (a SAS token, ...)."""
        return _reason(exc).replace(self.url, self.shown)

    # -- checks ------------------------------------------------------------------------------
    def probe(self) -> None:
        """Write and delete a small object: a missing bucket or missing permission fails here, before training."""
        probe = self.remote(f".taktstock-write-probe-{uuid.uuid4().hex}")
        try:
            self.fs.pipe_file(probe, b"taktstock write probe")
            self.fs.rm_file(probe)
        except Exception as exc:  # every backend raises its own types
            raise ConfigError(f"--run-dir {self.shown}: cannot write there ({self.reason(exc)})") from None

    # -- reading the remote ------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        try:
            return bool(self.fs.exists(self.remote(rel)))
        except FileNotFoundError:
            return False

    def manifests(self) -> dict[int, str]:
        """step -> remote manifest path of every periodic checkpoint with a manifest."""
        try:
            names = self.fs.ls(self.remote("checkpoints"), detail=False, refresh=True)
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            m = _STEP_MANIFEST.search(str(name))
            if m:
                found[int(m.group(1))] = str(name)
        return found

    def data_files(self) -> dict[int, str]:
        """step -> remote data path of every periodic checkpoint data file (complete or not)."""
        try:
            names = self.fs.ls(self.remote("checkpoints"), detail=False, refresh=True)
        except FileNotFoundError:
            return {}
        return {int(m.group(1)): str(n) for n in names if (m := re.search(r"step-(\d+)\.pt$", str(n)))}

    def _download(self, rel: str, dest: Path) -> bool:
        """Copy a remote file to `dest` atomically; False if it does not exist remotely."""
        tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(self.remote(rel), str(tmp))
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, dest)
        self.pulled.add(dest.relative_to(self.local).as_posix())
        return True

    def _download_checkpoint(self, name: str) -> CheckpointInfo | None:
        """Download checkpoints/<name>.pt and its manifest; None (nothing kept) unless the data matches the manifest."""
        ckpt = self.local / "checkpoints"
        try:
            raw = self.fs.cat_file(self.remote(f"checkpoints/{name}.json"))
            manifest = json.loads(raw)
        except (FileNotFoundError, ValueError):
            return None
        data = ckpt / f"{name}.pt"
        if not self._download(f"checkpoints/{name}.pt", data):
            return None
        digest = _sha256(data)
        if digest != manifest.get("sha256"):
            print(f"warning: skipping damaged checkpoint {self.shown}/checkpoints/{name}.pt: its SHA-256 does not match", file=sys.stderr)
            data.unlink(missing_ok=True)
            return None
        (ckpt / f"{name}.json").write_bytes(raw)  # the manifest after its data, as a local save
        self.pulled.add(f"checkpoints/{name}.json")
        return CheckpointInfo(data, int(manifest["step"]), digest)

    # -- pulling into the mirror -------------------------------------------------------------
    def pull(self, keep_last: int = 3) -> Path:
        """Bring the mirror up to the remote's newest complete checkpoint (no-op when the mirror is as new).

        Every process of a node may call it: a file lock lets one download while the others wait."""
        from filelock import FileLock

        self.local.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.local) + ".lock"):
            manager = CheckpointManager(self.local / "checkpoints", keep_last)
            local = manager.latest_valid() if manager.dir.is_dir() else None
            remote = self.manifests()
            newest = max(remote, default=None)
            has_run = (self.local / "run.json").is_file()
            if has_run and (newest is None or (local is not None and local.step >= newest)):
                return self.local  # the mirror is as new as the remote (same machine, uploads done or pending)
            if not self.exists("run.json"):
                return self.local  # nothing there yet: a new run
            for rel in RUN_FILES:
                self._download(rel, self.local / rel)
            if self._download_checkpoint("best") is None:
                for stale in ("best.pt", "best.json"):
                    (manager.dir / stale).unlink(missing_ok=True)
            for step in sorted(remote, reverse=True):
                info = self._download_checkpoint(checkpoint_name(step).removesuffix(".pt"))
                if info is not None:
                    manager._link_last(info.path)
                    print(f"downloaded {self.shown}/checkpoints/{info.path.name} (step {step}) to {self.local}", file=sys.stderr)
                    break
        return self.local

    def download_run(self) -> Path:
        """What evaluate/predict/export/promote read: the run's files, best.pt, and (unfinished run) the newest checkpoint."""
        if not self.exists("config.yaml"):
            raise ConfigError(f"{self.shown}: not a run directory (no config.yaml there)")
        for rel in RUN_FILES:
            if not self._download(rel, self.local / rel):
                (self.local / rel).unlink(missing_ok=True)  # a file the remote run no longer has
        self._download_checkpoint("best")
        if not (self.local / "model.safetensors").is_file():  # unfinished: the models load the last checkpoint
            for step in sorted(self.manifests(), reverse=True):
                info = self._download_checkpoint(checkpoint_name(step).removesuffix(".pt"))
                if info is not None:
                    CheckpointManager(self.local / "checkpoints")._link_last(info.path)
                    break
        return self.local

    def clear(self) -> bool:
        """Delete the run at the URL (--overwrite); only one that taktstock wrote (it has run.json). True if deleted."""
        if not self.exists("run.json"):
            return False
        for rel in ("checkpoints", "eval", "plots", "export"):
            if self.exists(rel):
                self.fs.rm(self.remote(rel), recursive=True)
        for rel in RUN_FILES:
            if self.exists(rel):
                self.fs.rm_file(self.remote(rel))
        return True

    def upload_dir(self, rel: str) -> None:
        """Upload RUN_DIR/<rel>/ (results a command wrote into the mirror, e.g. eval/)."""
        src = self.local / rel
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            self.fs.put_file(str(path), self.remote(path.relative_to(self.local).as_posix()))


@contextlib.contextmanager
def opened_run(run_dir: str | Path, write_back: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local run directory for `run_dir`: itself, or for a URL its downloaded mirror; `write_back` folders
    the command wrote there (e.g. eval/) are uploaded to the URL afterwards."""
    if not is_url(run_dir):
        yield Path(run_dir)
        return
    remote = RemoteRun(str(run_dir))
    try:
        local = remote.download_run()
    except (OSError, PermissionError) as exc:
        raise ConfigError(f"{remote.shown}: cannot read the run ({remote.reason(exc)})") from None
    yield local
    for rel in write_back:
        if (local / rel).is_dir():
            remote.upload_dir(rel)
            print(f"uploaded {rel}/ to {remote.shown}/{rel}/", file=sys.stderr)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
