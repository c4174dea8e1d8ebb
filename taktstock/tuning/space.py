"""The search space: `tune.space` of the experiment, checked before any trial runs, and turned into trial configs.

Every dimension names a dotted config key (optim.lr, model.hidden, train.batch_size, model.name, ...).
A trial's config is the experiment's resolved config with the sampled values set, validated like any
config file, so a sampled value the schema rejects fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from taktstock.config.loader import config_to_dict, validate
from taktstock.config.schema import Config, TuneParam
from taktstock.errors import ConfigError

# Searching these would change the sweep itself or where trials are written.
_FORBIDDEN_PREFIXES = ("tune", "experiment.output_dir", "logging.mlflow.parent_run_id")


@dataclass(frozen=True)
class Dimension:
    key: str
    param: TuneParam

    def distribution(self) -> Any:
        import optuna.distributions as d

        p = self.param
        if p.type == "categorical":
            return d.CategoricalDistribution(_hashable(p.choices or []))
        if p.type == "int":
            return d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))  # type: ignore[arg-type]
        return d.FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)  # type: ignore[arg-type]

    def grid(self) -> list[Any] | None:
        """All values of a finite dimension (grid search), None for a continuous one."""
        p = self.param
        if p.type == "categorical":
            return list(_hashable(p.choices or []))
        if p.type == "int":
            return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))  # type: ignore[arg-type]
        if p.step is not None:
            n = math.floor((p.high - p.low) / p.step + 1e-9)  # type: ignore[operator]
            return [round(p.low + i * p.step, 12) for i in range(n + 1)]  # type: ignore[operator]
        return None

    def extremes(self) -> list[Any]:
        """Values that must all give a valid config: both bounds, or every choice."""
        p = self.param
        if p.type == "categorical":
            return list(p.choices or [])
        if p.type == "int":
            return [int(p.low), int(p.high)]  # type: ignore[arg-type]
        return [float(p.low), float(p.high)]  # type: ignore[arg-type]


def _hashable(values: list[Any]) -> tuple[Any, ...]:
    """Optuna stores categorical choices as None/bool/int/float/str; lists (e.g. model.hidden) go in as YAML text."""
    import yaml

    out = []
    for v in values:
        out.append(v if v is None or isinstance(v, bool | int | float | str) else yaml.safe_dump(v, default_flow_style=True).strip())
    return tuple(out)


def _decode(value: Any, choices: list[Any] | None) -> Any:
    """Inverse of `_hashable` for one sampled categorical value."""
    if choices is None or not isinstance(value, str):
        return value
    for choice in choices:
        if _hashable([choice])[0] == value:
            return choice
    return value


class SearchSpace:
    """The checked `tune.space` of one experiment."""

    def __init__(self, config: Config) -> None:
        self.base = config_to_dict(config)
        self.monitor = config.metrics.monitor
        self.mode = config.metrics.mode
        self.dims = [Dimension(k, p) for k, p in config.tune.space.items()]
        if not self.dims:
            raise ConfigError(
                "tune.space is empty: add at least one dimension, e.g. tune.space.optim.lr: {type: float, low: 1e-4, high: 1e-2, log: true}"
            )
        for dim in self.dims:
            _check_dimension(dim)
            self._check_key(dim.key)
        for dim in self.dims:
            context = self._context_for(dim.key)
            for value in dim.extremes():
                try:
                    self.trial_config(context | {dim.key: value}, raw=True)
                except ConfigError as exc:
                    raise ConfigError(f"tune.space.{dim.key}: value {value!r} gives an invalid config: {exc}") from None

    def _check_key(self, key: str) -> None:
        if any(key == p or key.startswith(p + ".") for p in _FORBIDDEN_PREFIXES):
            raise ConfigError(f"tune.space.{key}: this key cannot be searched")
        node: Any = self.base
        parts = key.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            # With model.name searched, a model argument may belong to another model than the base one.
            if parts[0] == "model" and len(parts) == 2 and self._model_choices_accept(parts[1]):
                return
            # Optimizer arguments (momentum, betas, ...) need not be in the base config.
            if parts[0] == "optim" and len(parts) == 2 and self._optimizer_accepts(parts[1]):
                return
            here = ".".join(parts[:i]) or "the top level"
            import difflib

            close = difflib.get_close_matches(part, list(node) if isinstance(node, dict) else [], n=1)
            hint = f"; did you mean '{'.'.join([*parts[:i], close[0]])}'?" if close else ""
            raise ConfigError(f"tune.space.{key}: unknown config key ({part!r} is not in {here}){hint}")

    def _model_names_accepting(self, arg: str) -> list[str]:
        from taktstock.models.registry import constructor_params, get_model_class

        names = next((d.param.choices for d in self.dims if d.key == "model.name"), None) or []
        return [str(n) for n in names if arg in constructor_params(get_model_class(str(n)))]

    def _model_choices_accept(self, arg: str) -> bool:
        return bool(self._model_names_accepting(arg))

    def _optimizer_accepts(self, arg: str) -> bool:
        import inspect

        from taktstock.training.optim import optimizer_class

        cls = optimizer_class(self.base["optim"]["name"])
        return arg in set(inspect.signature(cls.__init__).parameters) - {"self", "params"}

    def _context_for(self, key: str) -> dict[str, Any]:
        """Other values needed to check one dimension alone: a model that takes a searched model argument."""
        parts = key.split(".")
        if parts[0] == "model" and len(parts) == 2 and parts[1] not in self.base["model"]:
            return {"model.name": self._model_names_accepting(parts[1])[0]}
        return {}

    def distributions(self) -> dict[str, Any]:
        return {d.key: d.distribution() for d in self.dims}

    def grid(self) -> dict[str, list[Any]]:
        grid = {}
        for d in self.dims:
            values = d.grid()
            if values is None:
                raise ConfigError(f"tune.space.{d.key}: the grid sampler needs a finite dimension (categorical, int, or float with step)")
            grid[d.key] = values
        return grid

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled (storage) values -> config values (categorical YAML text back to lists)."""
        by_key = {d.key: d for d in self.dims}
        return {k: _decode(v, by_key[k].param.choices if k in by_key else None) for k, v in params.items()}

    def trial_config(self, params: dict[str, Any], parent_run_id: str | None = None, raw: bool = False) -> Config:
        """The base config with `params` set (decoded unless raw), validated."""
        values = params if raw else self.decode(params)
        data = copy.deepcopy(self.base)
        for key, value in values.items():
            _set(data, key, value)
        if "model.name" in values and values["model.name"] != self.base["model"]["name"]:
            _keep_model_args(data)
        if parent_run_id is not None:
            data["logging"]["mlflow"]["parent_run_id"] = parent_run_id
        return validate(data, {}, source="trial")


def _check_dimension(dim: Dimension) -> None:
    p, key = dim.param, f"tune.space.{dim.key}"
    if p.type == "categorical":
        if not p.choices:
            raise ConfigError(f"{key}: a categorical dimension needs a non-empty 'choices' list")
        if p.low is not None or p.high is not None or p.log or p.step is not None:
            raise ConfigError(f"{key}: a categorical dimension takes only 'choices' (not low/high/log/step)")
        if len(set(_hashable(p.choices))) != len(p.choices):
            raise ConfigError(f"{key}: duplicate choices {p.choices}")
        return
    if p.choices is not None:
        raise ConfigError(f"{key}: 'choices' is only for type: categorical")
    if p.low is None or p.high is None:
        raise ConfigError(f"{key}: a {p.type} dimension needs both 'low' and 'high'")
    if p.low > p.high:
        raise ConfigError(f"{key}: low ({p.low}) > high ({p.high})")
    if p.log and p.low <= 0:
        raise ConfigError(f"{key}: log scale needs low > 0 (got low={p.low})")
    if p.log and p.step is not None:
        raise ConfigError(f"{key}: 'log' and 'step' cannot be combined")
    if p.step is not None and p.step <= 0:
        raise ConfigError(f"{key}: step must be > 0 (got {p.step})")
    if p.type == "int":
        for name, v in (("low", p.low), ("high", p.high), ("step", p.step)):
            if v is not None and float(v) != int(v):
                raise ConfigError(f"{key}: an int dimension needs an integer {name} (got {v})")


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _keep_model_args(data: dict[str, Any]) -> None:
    """Another model was sampled: drop base-model arguments it does not take (searched ones are kept and checked)."""
    from taktstock.models.registry import constructor_params, get_model_class

    accepted = set(constructor_params(get_model_class(data["model"]["name"]))) | {"name", "init"}
    for arg in list(data["model"]):
        if arg not in accepted:  # also a searched argument that belongs to another model choice
            del data["model"][arg]
