"""The component registry: the ground floor that config validation asks about names.

Components declare themselves here (a name, the object, and facts such as the task a loss is for);
`config.loader` validates a config by looking names up, so config never imports the packages that
implement them. Each kind names the module that registers its built-ins; that module is imported on
the first lookup (like a plugin entry point), which keeps `taktstock --help` free of torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from taktstock.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Named components of one kind (`key` is the config key that selects one, for messages)."""

    def __init__(self, kind: str, key: str, provider: str) -> None:
        self.kind, self.key, self.provider = kind, key, provider
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, obj: Any = None, **meta: Any) -> Any:
        """Register `obj` under `name`; without `obj`, a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, **meta)
        self._entries[name] = Entry(name, obj, meta)
        return obj

    def _load(self) -> None:
        # Flag first: the provider registers into this very registry while it is imported.
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.provider)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return list(self._entries.values())

    def find(self, name: str) -> Entry | None:
        self._load()
        return self._entries.get(name)

    def get(self, name: str, hint: str = "") -> Entry:
        """The entry, or a ConfigError naming the key and the choices."""
        entry = self.find(name)
        if entry is None:
            raise ConfigError(f"{self.key}: unknown {self.kind} '{name}' (choose from {', '.join(self.names())}{hint})")
        return entry

    def where(self, **meta: Any) -> list[str]:
        """Names whose metadata matches, e.g. LOSSES.where(task="regression")."""
        return [e.name for e in self.entries() if all(e.meta.get(k) == v for k, v in meta.items())]


OPTIMIZERS = Registry("optimizer", "optim.name", "taktstock.training.optim")
LOSSES = Registry("loss", "loss.name", "taktstock.training.losses")
SOURCES = Registry("source", "data.source", "taktstock.data.sources")
METRICS = Registry("metric", "metrics.monitor", "taktstock.metrics.collection")
