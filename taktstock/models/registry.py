"""Name -> model class registry; user models by import path; construction from config."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from taktstock.errors import ConfigError
from taktstock.utils.imports import import_object, is_import_path

_MODELS: dict[str, type[nn.Module]] = {}

# Arguments the trainer supplies from the data, never from the config.
INJECTED_ARGS = ("input_shape", "num_outputs", "vocab_size", "cardinalities")


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model available as `model.name: <name>`."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        _MODELS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    # Imported for their @register_model side effect.
    from taktstock.models import cnn, gpt, mlp, resnet, tabular, transformer  # noqa: F401


def available_models() -> list[str]:
    _load_builtins()
    return sorted(_MODELS)


def get_model_class(name: str) -> type[nn.Module]:
    """Look up a registered model or import 'module:Class'."""
    if is_import_path(name):
        return import_object(name, "model.name")
    _load_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"model.name: unknown model '{name}' (choose from {', '.join(sorted(_MODELS))} or use 'module:Class'; "
            "a model registered with @register_model needs its module listed under plugins)"
        ) from None


def constructor_params(cls: type) -> dict[str, inspect.Parameter]:
    """Constructor parameters a config may set (excluding self, *args/**kwargs and injected ones)."""
    sig = inspect.signature(cls.__init__)
    return {
        n: p
        for n, p in sig.parameters.items()
        if n != "self" and n not in INJECTED_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def build_model(
    name: str,
    params: dict[str, Any],
    input_shape: tuple[int, ...],
    num_outputs: int,
    vocab_size: int | None = None,
    hf_config: dict[str, Any] | None = None,
    task: str = "classification",
    cardinalities: list[int] | None = None,
) -> nn.Module:
    """Instantiate a model, passing the data-derived arguments the class accepts (from the sample spec):
    `input_shape`, `num_outputs`, for token inputs `vocab_size` unless the config sets it, and for
    index-encoded tables `cardinalities` (embedding rows per categorical column).
    torchvision:/timm:/hf: names go to their builders (`hf_config`, `task`: see models/hf.py)."""
    from taktstock.models import zoo

    if zoo.is_zoo_name(name):  # before import paths, which also contain ':'
        return zoo.build(name, params, input_shape, num_outputs, hf_config, task, vocab_size)
    cls = get_model_class(name)
    sig = inspect.signature(cls.__init__).parameters
    injected: dict[str, Any] = {"input_shape": tuple(input_shape), "num_outputs": num_outputs}
    if vocab_size is not None:
        injected["vocab_size"] = vocab_size
    if cardinalities is not None:
        if "cardinalities" not in sig:  # it would fail at its first forward, on the (numeric, categorical) fields
            raise ConfigError(
                f"model.name: {name} takes no 'cardinalities', so not the level indices of data.categorical_encoding=index; "
                "use model.name=tabular, or data.categorical_encoding=onehot"
            )
        injected["cardinalities"] = list(cardinalities)
    kwargs = {k: v for k, v in injected.items() if k in sig}
    kwargs.update(params)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. hidden: [0] or a channel count of -1
        raise ConfigError(f"model: cannot build {name} with {params} ({exc})") from None
