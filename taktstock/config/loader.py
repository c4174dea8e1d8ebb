"""Load an experiment: YAML file + dotted command-line overrides -> validated, fully resolved `Config`.

Every user mistake becomes a `ConfigError` naming the key path (and the YAML line where known).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from taktstock.config.overrides import OPEN_MAPPINGS, apply_override, drop_stale_arguments, parse_override
from taktstock.config.schema import Config
from taktstock.errors import ConfigError
from taktstock.utils.dicts import flatten_dict

__all__ = [
    "OPEN_MAPPINGS",
    "apply_override",
    "load_config",
    "load_config_with_sources",
    "parse_override",
    "read_config",
    "read_yaml",
    "validate",
    "yaml_load",
]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-4, 3E5) as numbers, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where `lr: 1e-4` is the *string* '1e-4': pydantic fields coerce it, but
    free optimizer/model arguments (optim.eps=1e-8) would reach PyTorch as strings.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def yaml_load(text: str) -> Any:
    """Parse YAML text (a file or an override value) with the config loader's rules."""
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read `path` (or start from defaults), apply `key.path=value` overrides, validate and resolve."""
    return load_config_with_sources(path, overrides)[0]


def load_config_with_sources(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[Config, dict[str, str]]:
    """`load_config`, plus where each resolved leaf key came from: a file path, 'override' or 'default'."""
    raw: dict[str, Any] = {}
    lines: dict[str, int | str] = {}
    files: dict[str, str] = {}
    if path is not None:
        raw, lines, files = read_config(Path(path))
    config = validate(raw, lines, source=str(path) if path else "defaults")
    overridden: set[str] = set()
    if overrides:
        # Overrides go into the raw file content, not the resolved dict: the resolved dict carries the
        # defaults of the *current* model, which would be invalid arguments after `model.name=cnn`.
        known, data = config_to_dict(config), copy.deepcopy(raw)
        overridden = {apply_override(data, item, known=known) for item in overrides}
        drop_stale_arguments(raw, data, overridden)
        config = validate(data, {}, source="command line")
    sources = {}
    for key in flatten_dict(config_to_dict(config)):
        if any(key == o or key.startswith(o + ".") for o in overridden):
            sources[key] = "override"
        else:
            sources[key] = files.get(key, "default")
    return config, sources


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, int | str], dict[str, str]]:
    """An experiment file with its `extends:` bases merged in (bases first, in order; the file last).

    Mappings merge key by key, any other value (lists included) replaces the base's. Returns the raw
    mapping, the line of each key (an int in `path` itself, 'file:line' in a base) and the file that
    set each leaf key.
    """
    raw, located = _read_extended(path, ())
    top = str(path)
    lines: dict[str, int | str] = {k: line if f == top else f"{f}:{line}" for k, (f, line) in located.items()}
    leaves = flatten_dict(raw)
    files = {}
    for key in leaves:
        # The file that wrote the leaf itself (or the list/scalar holding it) is the last that named it.
        files[key] = located[key][0] if key in located else top
    return raw, lines, files


def _read_extended(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved) :], resolved))
        raise ConfigError(f"{path}: 'extends' forms a cycle: {cycle}")
    data, file_lines = read_yaml(path)
    bases = data.pop("extends", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(f"{path}:{file_lines.get('extends', '?')}: extends: must be a file name or a list of file names (got {bases!r})")
    merged: dict[str, Any] = {}
    located: dict[str, tuple[str, int]] = {}
    for base in bases:
        base_path = Path(os.path.normpath(path.parent / base))  # 'experiments/../base.yaml' reads as 'base.yaml'
        if not base_path.is_file():
            raise ConfigError(f"{path}:{file_lines.get('extends', '?')}: extends: base config not found: {base_path}")
        base_raw, base_located = _read_extended(base_path, (*chain, resolved))
        _deep_merge(merged, base_raw, located, base_located)
    own = {k: (str(path), line) for k, line in file_lines.items() if k != "extends" and not k.startswith("extends.")}
    _deep_merge(merged, data, located, own)
    return merged, located


def _deep_merge(
    into: dict[str, Any],
    new: dict[str, Any],
    located: dict[str, tuple[str, int]],
    new_located: dict[str, tuple[str, int]],
    prefix: str = "",
) -> None:
    for k, v in new.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            if key in new_located:
                located[key] = new_located[key]
            _deep_merge(into[k], v, located, new_located, key + ".")
            continue
        for stale in [s for s in located if s.startswith(key + ".")]:  # a value replacing a base mapping
            del located[stale]
        into[k] = copy.deepcopy(v)
        located.update({s: loc for s, loc in new_located.items() if s == key or s.startswith(key + ".")})


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML mapping and remember the line of every key path."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (experiment, data, model, ...)")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", out)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def validate(raw: dict[str, Any], lines: dict[str, int | str], source: str) -> Config:
    """Validate a raw mapping into a `Config`, then resolve model/optimizer arguments and metric names."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, lines, source, Config)) from None
    _import_plugins(config)
    _resolve_model(config, lines, source)
    _check_optimizer(config, lines, source)
    _check_names(config, lines, source)
    return config


def format_validation_error(
    exc: ValidationError, lines: dict[str, int | str], source: str, root: type[BaseModel] | None, prefix: str = ""
) -> str:
    messages = []
    for err in exc.errors()[:5]:
        loc = prefix + ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent, _, last = loc.rpartition(".")
            msg = f"unknown key '{last}'" + _suggest(last, _fields_at(root, parent.removeprefix(prefix.rstrip(".")).strip(".")))
        elif "input" in err and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
        messages.append(f"{_where(source, lines, loc)}{loc}: {msg}")
    if len(exc.errors()) > 5:
        messages.append(f"... and {len(exc.errors()) - 5} more errors")
    return "invalid config:\n  " + "\n  ".join(messages)


def _fields_at(root: type[BaseModel] | None, dotted: str) -> list[str]:
    model: Any = root
    for part in [p for p in dotted.split(".") if p]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}) or [])


def _where(source: str, lines: dict[str, int | str], loc: str) -> str:
    line = lines.get(loc)
    if isinstance(line, str):  # a key set in a base file (extends:) carries its own 'file:line'
        return f"{line}: "
    return f"{source}:{line}: " if line else (f"{source}: " if source != "command line" else "")


def _import_plugins(config: Config) -> None:
    """Import the user's plugin modules first: their registrations must exist before names are resolved."""
    from taktstock.utils.imports import import_module

    for i, module in enumerate(config.plugins):
        if ":" in module or not module.strip():
            raise ConfigError(f"plugins[{i}]: '{module}' must be a module name like models.my_net (no ':Attr')")
        import_module(module, f"plugins[{i}]")


def _resolve_model(config: Config, lines: dict[str, int | str], source: str) -> None:
    """Check model arguments against the model's constructor and fill in its defaults."""
    from taktstock.models import finetune, zoo
    from taktstock.models.registry import constructor_params, get_model_class

    finetune.check_model_config(config)
    if zoo.is_zoo_name(config.model.name):  # torchvision:/timm:/hf: builders check their own arguments
        zoo.check_params(config.model.name, config.model.params())
        return
    cls = get_model_class(config.model.name)
    params = constructor_params(cls)
    try:  # resolves string annotations (from __future__ import annotations)
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    for name, p in params.items():
        annotation = hints.get(name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        if isinstance(default, tuple):
            default = list(default)
        fields[name] = (annotation, default)
    schema = create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    try:
        resolved = schema.model_validate(config.model.params()).model_dump()
    except ValidationError as exc:
        msg = format_validation_error(exc, lines, source, schema, prefix="model.")  # lines are keyed by full paths
        msg = msg.replace("unknown key", f"{config.model.name} has no argument")
        raise ConfigError(msg) from None
    # Pydantic keeps extras in __pydantic_extra__; replace them with the resolved arguments.
    config.model.__pydantic_extra__ = resolved


def _check_optimizer(config: Config, lines: dict[str, int | str], source: str) -> None:
    from taktstock.registry import OPTIMIZERS

    spec = OPTIMIZERS.get(config.optim.name.lower()).obj
    accepted = spec.accepted
    if spec.needs_closure:
        raise ConfigError(
            f"{_where(source, lines, 'optim.name')}optim.name: {spec.cls.__name__} needs step(closure) to re-evaluate the loss, "
            "which the training loop (one step per batch) does not call; use adam, adamw or sgd"
        )
    for key in config.optim.kwargs():
        if key not in accepted:
            raise ConfigError(
                f"{_where(source, lines, f'optim.{key}')}optim.{key}: {spec.cls.__name__} has no argument '{key}'"
                + _suggest(key, sorted(accepted))
            )
    if config.optim.fused and "fused" not in accepted:
        raise ConfigError(f"{_where(source, lines, 'optim.fused')}optim.fused: {spec.cls.__name__} has no fused implementation")
    if config.optim.weight_decay and "weight_decay" not in accepted:
        raise ConfigError(f"{_where(source, lines, 'optim.weight_decay')}optim.weight_decay: {spec.cls.__name__} has no weight decay")
    # Values are checked by the optimizer itself, before any run directory exists.
    # Implementation switches depend on the device the run uses, not on a CPU tensor.
    kwargs = {k: v for k, v in spec.kwargs(config.optim).items() if k not in ("fused", "foreach", "capturable", "differentiable")}
    problem = _optimizer_rejects(spec.cls, kwargs)
    if problem is not None:
        raise ConfigError(f"{_where(source, lines, 'optim.name')}optim: {spec.cls.__name__} rejects the given arguments ({problem})")


def _optimizer_rejects(cls: Any, kwargs: dict[str, Any]) -> Exception | None:
    """The optimizer's own verdict on its arguments, or None when it accepts them.

    torch.optim's classes check their values in `__init__` before reading the parameters, so an empty
    parameter list gets through every check and stops at "optimizer got an empty parameter list". A real
    parameter would go on to `add_param_group`, whose first call imports torch._dynamo (~3 s): evaluate,
    predict, export and `config show` load configs but never build an optimizer. Anything else (an error
    of another kind, a class that reads its parameters first) is decided on a dummy parameter.
    """
    try:
        cls([], **kwargs)
    except ValueError as exc:
        if "empty parameter list" in str(exc):
            return None
    except Exception:  # decided below, on a real parameter
        pass
    else:
        return None
    import torch

    try:
        cls([torch.zeros(1, requires_grad=True)], **kwargs)
    except (TypeError, ValueError) as exc:
        return exc
    return None


def _check_names(config: Config, lines: dict[str, int | str], source: str) -> None:
    from taktstock.registry import LOSSES, METRICS, SOURCES
    from taktstock.utils.imports import is_import_path

    entry = None
    if not is_import_path(config.data.source):
        entry = SOURCES.get(
            config.data.source,
            " or use 'module:Class'; a source registered with @register_source or @register_dataset needs its module listed under plugins",
        )
        if entry.meta.get("check") is not None:
            entry.meta["check"](config)  # the source's own settings (e.g. image transforms), before any data is read
        _check_source_task(config, entry, lines, source)
    if entry is not None and config.data.split_by != "fractions":
        where = _where(source, lines, "data.split_by")
        raise ConfigError(
            f"{where}data.split_by: 'dataset' is for a user Dataset class with a `split` argument, not data.source '{config.data.source}'"
        )
    if config.logging.samples is not None and (entry is None or config.task != "language_modeling"):
        where = _where(source, lines, "logging.samples")
        raise ConfigError(
            f"{where}logging.samples: text samples need a language model trained on data.source: corpus "
            f"(this run is {config.task} on '{config.data.source}'); remove logging.samples"
        )
    loss, task = config.loss.name, config.data.task
    if not is_import_path(loss):
        implied = LOSSES.get(loss, " or use 'module:callable'").meta["task"]
        # Language modelling is per-token classification: it trains with the classification losses.
        if task not in ("auto", implied) and not (task == "language_modeling" and implied == "classification"):
            where = _where(source, lines, "data.task")
            raise ConfigError(f"{where}data.task: '{task}' does not fit loss.name '{loss}' (use data.task: auto to follow the loss)")
    names = METRICS.get("monitor_names").obj(config)
    if config.metrics.monitor not in names:
        where = _where(source, lines, "metrics.monitor")
        raise ConfigError(f"{where}metrics.monitor: unknown metric '{config.metrics.monitor}' (choose from {', '.join(names)})")


def _check_source_task(config: Config, entry: Any, lines: dict[str, int | str], source: str) -> None:
    """The task a source declares (corpus: language_modeling) and the sequence length its samples can reach."""
    declared, task = entry.meta.get("task"), config.data.task
    if declared == "any":  # the data says (mds shards of any dataset): the source checks data.task itself
        return
    lm_source = declared == "language_modeling"
    if task != "auto" and declared is not None and (task == "language_modeling") != lm_source:
        where = _where(source, lines, "data.task")
        raise ConfigError(f"{where}data.task: '{task}' does not fit data.source '{config.data.source}' (which is for {declared})")
    if task == "language_modeling" and declared is None:
        where = _where(source, lines, "data.task")
        raise ConfigError(f"{where}data.task: language_modeling needs data.source: corpus (or a user dataset by import path)")
    # A model whose positions end before the data's longest sample fails at its first forward: say so now.
    length_key = entry.meta.get("length_key")
    if length_key is not None:
        model_len, data_len = config.model.params().get(length_key), getattr(config.data, length_key)
        if isinstance(model_len, int) and model_len < data_len:
            where = _where(source, lines, f"model.{length_key}")
            raise ConfigError(
                f"{where}model.{length_key}: {model_len} is shorter than data.{length_key} {data_len} "
                f"(raise model.{length_key} or lower data.{length_key})"
            )


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain, YAML/JSON-safe dict of the fully resolved config."""
    return config.model_dump(mode="json")


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: Path) -> None:
    from taktstock.utils.atomic import atomic_write_text

    atomic_write_text(Path(path), config_to_yaml(config))  # a kill mid-write must not leave a truncated config
