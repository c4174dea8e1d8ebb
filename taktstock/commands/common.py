"""Argument helpers shared by commands."""

from __future__ import annotations

from pathlib import Path


def split_config_args(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """[CONFIG] [key=value | ~key ...] -> (config path or None, overrides)."""
    from taktstock.config.overrides import is_override

    args = list(args or [])
    config = None
    if args and not is_override(args[0]):
        config = Path(args.pop(0))
    bad = [a for a in args if not is_override(a)]
    if bad:
        from taktstock.errors import ConfigError

        raise ConfigError(f"expected overrides of the form key.path=value, or ~key.path, got: {' '.join(bad)}")
    return config, args
