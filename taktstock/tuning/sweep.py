"""A sweep directory and its settings: what `taktstock tune` writes before any trial, and what resuming checks.

SWEEP_DIR/sweep.json     backend, study name, storage, MLflow parent run (re-read on resume)
SWEEP_DIR/base.yaml      the experiment's resolved config; every trial (and every worker) starts from this file
SWEEP_DIR/study.journal  embedded Optuna storage (when no --storage is given)
SWEEP_DIR/trials/trial-NNNN/   one normal run directory per trial
SWEEP_DIR/trials.csv, best.yaml, plots/   the results (rewritten at the end of every invocation)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from taktstock.config.loader import config_to_dict, load_config
from taktstock.config.schema import Config
from taktstock.errors import UserError


@dataclass
class SweepSpec:
    backend: str
    study: str
    storage: str | None
    parent_run_id: str | None = None
    created: float = 0.0
    nproc_per_trial: int = 1

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepSpec | None:
        path = sweep_dir / "sweep.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def write(self, sweep_dir: Path) -> None:
        from taktstock.utils.atomic import atomic_write_text

        atomic_write_text(sweep_dir / "sweep.json", json.dumps(asdict(self), indent=2))


def default_sweep_dir(config: Config) -> Path:
    base = Path("experiments/sweeps") / f"{config.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must not change when a sweep is resumed (the budget may)."""
    data = json.loads(json.dumps(config_dict))
    data.get("tune", {}).pop("trials", None)
    data.get("tune", {}).pop("timeout_s", None)
    return data


def write_base_config(config: Config, sweep_dir: Path) -> Path:
    """Materialise the experiment as base.yaml; refuse to resume a sweep that was started from another experiment."""
    path = sweep_dir / "base.yaml"
    new = config_to_dict(config)
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        if _comparable(old) != _comparable(new):
            changed = _first_difference(_comparable(old), _comparable(new))
            raise UserError(
                f"{sweep_dir} holds a sweep of a different experiment (first difference: {changed}); "
                "use another --out for a new sweep, or restore the original config to resume"
            )
    path.write_text(yaml.safe_dump(new, sort_keys=False))
    return path


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the whole config"


def load_base_config(sweep_dir: Path) -> Config:
    return load_config(sweep_dir / "base.yaml")


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One `taktstock tune` per sweep directory at a time: with the lock held, RUNNING trials of the embedded
    storage belong to a dead process and can be failed and re-queued."""
    path = sweep_dir / ".sweep.lock"
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise UserError(f"{sweep_dir} is in use by another `taktstock tune` ({owner}); wait for it or use another --out") from None
        import os

        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
