"""Resolve user objects given as 'module:attr' import paths."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from taktstock.errors import ConfigError


def is_import_path(name: str) -> bool:
    """True for 'package.module:Attr' references."""
    return ":" in name


def import_module(module_name: str, key: str) -> Any:
    """Import a user module with the working directory importable, as users run from their project root."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module '{module_name}' ({exc})") from None


def import_object(path: str, key: str) -> Any:
    """Import 'module:attr' (attr may be dotted) with the working directory importable."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: '{path}' is not an import path of the form 'module:Name'")
    module = import_module(module_name, key)
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"{key}: module '{module_name}' has no attribute '{attr}'") from None
    return obj


def optional_import(module: str, extra: str, feature: str = "this feature") -> Any:
    """Import an optional integration, or fail with the pip extra that provides it (before anything is written)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{feature} needs the '{module}' package: pip install 'taktstock[{extra}]'") from None
