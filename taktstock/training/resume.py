"""Resume guard: refuse a resume whose config would break exactness, unless forced."""

from __future__ import annotations

from pathlib import Path

from taktstock.config.loader import config_to_dict, load_config
from taktstock.config.paths import with_absolute_paths
from taktstock.config.schema import Config
from taktstock.errors import ConfigError
from taktstock.run_dir import RunDir
from taktstock.utils.dicts import flatten_dict

# Keys that may change on resume without changing the continuation of the run.
SAFE_PREFIXES = (
    "train.epochs",
    "train.max_steps",
    "train.log_every_n_steps",
    "train.callbacks",
    "train.profile",  # observes the steps, changes nothing
    "model.activation_checkpointing",  # recomputes the same activations: bit-identical training (tests/test_first_week_tools.py)
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
    "experiment.output_dir",
    "experiment.tags",
    "tune.",
    "pipeline.",
)


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
