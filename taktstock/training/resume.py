"""Resume guard: refuse a resume whose config would break exactness, unless forced; decide what a relaunch does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from taktstock.config.loader import config_to_dict, load_config
from taktstock.config.paths import with_absolute_paths
from taktstock.config.schema import Config
from taktstock.errors import ConfigError, UserError
from taktstock.run_dir import RunDir
from taktstock.utils.dicts import flatten_dict

# Keys that may change on resume without changing the continuation of the run.
SAFE_PREFIXES = (
    "train.epochs",
    "train.max_steps",
    "train.log_every_n_steps",
    "train.callbacks",
    "logging.",
    "checkpoint.keep_last",
    "checkpoint.every_n_steps",  # where checkpoints are taken does not change the computation
    "checkpoint.every_epoch",
    "checkpoint.every_n_minutes",
    "checkpoint.async_write",
    "data.num_workers",
    "data.persistent_workers",
    "data.prefetch_factor",
    "data.in_memory",
    "data.memory_budget_mb",
    "data.cache_dir",  # where prepared arrays are cached (keyed by their fingerprint), not what they hold
    "experiment.output_dir",
    "experiment.tags",
    "tune.",
    "pipeline.",
)


# A relaunch (the same `train CONFIG --run-dir R` again) continues the run only if its config could not give
# a different result: the keys above minus those that change what is trained (epochs, max_steps, user callbacks).
RELAUNCH_IGNORED = tuple(p for p in SAFE_PREFIXES if p not in ("train.epochs", "train.max_steps", "train.callbacks"))

Relaunch = Literal["fresh", "resume", "complete"]


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = flatten_dict(config_to_dict(old)), flatten_dict(config_to_dict(new))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def check_resume_compatible(run: RunDir, config: Config | str | Path | None, overrides: list[str] | None, force: bool) -> Config:
    """The config to continue with: the run's own, optionally with overrides or a given file."""
    if not run.config.is_file():
        raise ConfigError(f"--resume: {run.root} is not a run directory (no config.yaml)")
    stored = load_config(run.config)
    if isinstance(config, Config):
        new = config
    else:
        new = load_config(config if config is not None else run.config, overrides)
    # Paths are compared as the run resolved them (absolute), whether written relative or not.
    new = with_absolute_paths(new)
    unsafe = [k for k in changed_keys(with_absolute_paths(stored), new) if not k.startswith(SAFE_PREFIXES)]
    if unsafe and not force:
        raise ConfigError(
            f"--resume: these settings differ from the run's and would break an exact continuation: {', '.join(unsafe)}. "
            "Only train.epochs, train.max_steps and logging/loader options may change; pass --force to continue anyway."
        )
    return new


def relaunch_plan(run: RunDir, config: Config, overwrite: bool) -> Relaunch:
    """What `train CONFIG --run-dir R` does with R: start a fresh run, continue R's run, or nothing (it is complete).

    A scheduler's requeue, a pod restart or a pipeline retry launches the same command again; it must find its
    run, not wipe it. A different config is a UserError naming the keys that differ and the ways out.
    """
    if overwrite or not run.info.is_file():
        return "fresh"  # only directories that taktstock wrote (run.json) count as a run
    if not run.config.is_file():
        raise ConfigError(f"--run-dir: {run.root} holds a run without its config.yaml; replace it with --overwrite")
    stored, new = with_absolute_paths(load_config(run.config)), with_absolute_paths(config)
    differ = [k for k in changed_keys(stored, new) if not k.startswith(RELAUNCH_IGNORED)]
    if differ:
        old, cur = flatten_dict(config_to_dict(stored)), flatten_dict(config_to_dict(new))
        shown = ", ".join(f"{k} ({_short(old.get(k))} -> {_short(cur.get(k))})" for k in differ[:8])
        more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(
            f"--run-dir: {run.root} holds a run with a different config: {shown}{more}. "
            f"Continue it with these settings: --resume {run.root} (--force where they break exactness); "
            "or replace it: --overwrite"
        )
    info = run.read_info()
    if info.get("status") == "completed" and run.model.is_file():
        return "complete"
    _refuse_live(run, info)
    return "resume"


def _refuse_live(run: RunDir, info: dict[str, Any]) -> None:
    """Two launches into one directory would interleave their checkpoints: a run still training here is an error."""
    import os

    from taktstock.utils.process import is_alive

    process = info.get("process") or {}
    if info.get("status") == "running" and process.get("pid") != os.getpid() and is_alive(process):
        raise UserError(f"--run-dir: {run.root} is being trained right now (pid {process['pid']}); wait for it or stop it first")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
