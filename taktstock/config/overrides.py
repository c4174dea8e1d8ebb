"""Command-line overrides: `key.path=value` sets a key, `~key.path` deletes one.

Keys are dotted paths. A key that itself contains dots (a `tune.space` dimension such as `optim.lr`)
is written in brackets or quotes (`tune.space[optim.lr].low=1e-4`, `tune.space."optim.lr".low=1e-4`),
or plainly when the config already has that key (`tune.space.optim.lr.low=1e-4`).
"""

from __future__ import annotations

import difflib
import inspect
import sys
from typing import Any

import yaml

from taktstock.errors import ConfigError

# Mappings with free keys (model/optimizer arguments, kwargs, tags, search space): an override may add
# a key there; validation then checks it against the model constructor or optimizer signature.
OPEN_MAPPINGS = ("model", "optim", "data.kwargs", "loss.kwargs", "experiment.tags", "tune.space")

# Schema fields of the model/optim sections (not constructor arguments): never dropped on a switch.
_MODEL_FIELDS = ("name", "init")
_OPTIM_FIELDS = ("name", "lr", "weight_decay", "fused")


def is_override(arg: str) -> bool:
    """True for `key=value` and `~key` command-line arguments (anything else is a config path)."""
    return "=" in arg or arg.startswith("~")


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', YAML-parsed value)."""
    from taktstock.config.loader import yaml_load

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like key.path=value (or ~key.path to delete a key)")
    try:
        parsed = yaml_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def split_key(key: str, item: str) -> list[str]:
    """'tune.space[optim.lr].low' -> ['tune', 'space', 'optim.lr', 'low'] (brackets and quotes keep dots)."""
    parts: list[str] = []
    current, i = "", 0
    closing = {"[": "]", '"': '"', "'": "'"}
    while i < len(key):
        ch = key[i]
        if ch == ".":
            parts.append(current)
            current = ""
        elif ch in closing:
            end = key.find(closing[ch], i + 1)
            if end < 0:
                raise ConfigError(f"override '{item}': unclosed {ch} in the key")
            if current:  # 'space[x]' is 'space' then 'x'
                parts.append(current)
            current = key[i + 1 : end]
            i = end
        else:
            current += ch
        i += 1
    parts.append(current)
    if any(not p for p in parts):
        raise ConfigError(f"override '{item}': empty part in the key '{key}'")
    return parts


def _join_dotted_keys(parts: list[str], known: dict[str, Any]) -> list[str]:
    """Merge parts that name an existing dotted key (`tune.space` has 'optim.lr': optim + lr -> optim.lr)."""
    out: list[str] = []
    node: Any = known
    i = 0
    while i < len(parts):
        j = i + 1
        if isinstance(node, dict):
            for end in range(len(parts), i + 1, -1):  # the longest existing dotted key wins
                if ".".join(parts[i:end]) in node:
                    j = end
                    break
        part = ".".join(parts[i:j])
        out.append(part)
        node = node.get(part) if isinstance(node, dict) else None
        i = j
    return out


def apply_override(data: dict[str, Any], item: str, known: dict[str, Any] | None = None) -> str:
    """Set (`key=value`) or delete (`~key`) one dotted key in `data`; returns the key path.

    The key must exist in `known` (default: `data` itself) or lie in an open mapping.
    """
    known = data if known is None else known
    if item.startswith("~"):
        key = item[1:].strip()
        if not key or "=" in key:
            raise ConfigError(f"override '{item}': ~ deletes a key and takes no value (write ~key.path)")
        parts = _join_dotted_keys(split_key(key, item), known)
        _check_override_key(item, key, parts, known, open_ok=False)  # deleting a typo must not pass silently
        _delete(data, parts)
        return ".".join(parts)
    key, value = parse_override(item)
    parts = _join_dotted_keys(split_key(key, item), known)
    _check_override_key(item, key, parts, known)
    node: Any = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return ".".join(parts)


def _delete(data: dict[str, Any], parts: list[str]) -> None:
    # Deleting a key the file does not set is fine: the schema default (or nothing) then applies.
    node: Any = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _check_override_key(item: str, key: str, parts: list[str], known: dict[str, Any], open_ok: bool = True) -> None:
    node: Any = known
    for i, part in enumerate(parts):
        if open_ok and ".".join(parts[:i]) in OPEN_MAPPINGS:
            return
        if not isinstance(node, dict) or part not in node:
            here = ".".join(parts[:i]) or "the top level"
            hint = _suggest(part, list(node) if isinstance(node, dict) else [])
            raise ConfigError(f"override '{item}': unknown key '{key}' ({part!r} is not in {here}){hint}")
        node = node[part]


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def drop_stale_arguments(before: dict[str, Any], data: dict[str, Any], overridden: set[str]) -> None:
    """After `model.name=...` / `optim.name=...` on the command line, drop the file's arguments the new class does not take.

    Arguments set on the command line are kept (validation then names any the class rejects).
    """
    from taktstock.models.registry import constructor_params, get_model_class
    from taktstock.registry import OPTIMIZERS

    def model_args(name: str) -> set[str] | None:
        params = inspect.signature(get_model_class(name).__init__).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None  # **kwargs: anything may be accepted
        return set(constructor_params(get_model_class(name)))

    def optim_args(name: str) -> set[str] | None:
        return set(OPTIMIZERS.get(name.lower()).obj.accepted)

    for section, fields, accepted_for, default in (
        ("model", _MODEL_FIELDS, model_args, "mlp"),
        ("optim", _OPTIM_FIELDS, optim_args, "adamw"),
    ):
        if f"{section}.name" not in overridden or not isinstance(data.get(section), dict):
            continue
        new = data[section].get("name")
        old = (before.get(section) or {}).get("name", default)
        if new == old or not isinstance(new, str):
            continue
        try:
            accepted = accepted_for(new)
        except ConfigError:
            continue  # an unknown name: validation reports it with the list of choices
        if accepted is None:
            continue
        stale = [k for k in data[section] if k not in fields and k not in accepted and f"{section}.{k}" not in overridden]
        for key in stale:
            del data[section][key]
        if stale:
            dropped = ", ".join(f"{section}.{k}" for k in stale)
            print(
                f"note: {section}.name={new}: dropped {dropped} ({new} does not take {'it' if len(stale) == 1 else 'them'})",
                file=sys.stderr,
            )
