"""Nested-dict helpers."""

from __future__ import annotations

from typing import Any


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings so every value is a scalar."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_dict(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, (list, dict)) else v
    return out
