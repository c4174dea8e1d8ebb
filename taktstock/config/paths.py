"""Path keys of a config, made absolute so a run directory works from any working directory."""

from __future__ import annotations

from pathlib import Path

from taktstock.config.schema import Config

# Keys holding file-system paths that later commands (evaluate, predict, resume) read again.
# experiment.output_dir is left as written: it only decides where *new* runs go.
PATH_KEYS = ("path", "cache_dir")


def with_absolute_paths(config: Config, base: Path | None = None) -> Config:
    """A copy of `config` with data.path and data.cache_dir resolved against `base` (default: the working directory).

    Training resolves relative paths against the working directory; recording them absolute in the run's
    config.yaml makes `evaluate RUN` from elsewhere read the same file and the run's own cache.
    """
    base = Path.cwd() if base is None else base
    out = config.model_copy(deep=True)
    for key in PATH_KEYS:
        value = getattr(out.data, key)
        if not value or Path(value).is_absolute():
            continue
        resolved = (base / value).resolve()
        # A data file that is not there stays as written, so the error shows the path the user wrote
        # and says what it is relative to; the cache directory is created later.
        # data.path of remote shards (data.remote) is their local cache: like cache_dir, it may not exist yet.
        if key == "cache_dir" or resolved.exists() or (key == "path" and out.data.remote):
            setattr(out.data, key, str(resolved))
    return out
