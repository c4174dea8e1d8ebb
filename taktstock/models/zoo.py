"""Models from the ecosystem by name: `torchvision:<name>`, `timm:<name>` and `hf:<dir or id>`.

The builders here make the architecture only (head sized to `num_outputs`, first conv sized to the
input channels); weights are loaded afterwards by `models.weights`, so evaluation and export never
need the pretrained file. torchvision, timm and transformers are imported only when such a name is used.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

from torch import nn

from taktstock.errors import ConfigError
from taktstock.utils.imports import optional_import

SOURCES = ("torchvision", "timm", "hf")
# Builder arguments taktstock sets itself (from the data or model.weights/pretrained), never the config.
_MANAGED = {"weights", "progress", "num_classes", "pretrained", "in_chans", "num_labels"}


def split_name(name: str) -> tuple[str, str] | None:
    """('timm', 'resnet10t') for 'timm:resnet10t'; None for other names."""
    source, sep, arch = name.partition(":")
    return (source, arch) if sep and source in SOURCES and arch else None


def is_zoo_name(name: str) -> bool:
    return split_name(name) is not None


def _torchvision_models() -> Any:
    return optional_import("torchvision.models", "vision")


def _timm() -> Any:
    return optional_import("timm", "vision")


def _torchvision_builder(arch: str) -> Any:
    tvm = _torchvision_models()
    try:
        return tvm.get_model_builder(arch)
    except ValueError:
        close = [m for m in tvm.list_models(module=tvm) if arch.lower() in m][:5]
        hint = f" (similar: {', '.join(close)})" if close else " (`taktstock models --source torchvision` lists them)"
        raise ConfigError(f"model.name: torchvision has no model '{arch}'{hint}") from None


def _check_timm_name(arch: str) -> None:
    timm = _timm()
    if not timm.is_model(arch.partition(".")[0]):
        close = timm.list_models(f"*{arch}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else " (`taktstock models --source timm` lists them)"
        raise ConfigError(f"model.name: timm has no model '{arch}'{hint}")


def builder_params(name: str) -> dict[str, inspect.Parameter] | None:
    """Arguments a config may pass to the builder of `name`; None when the builder has no checkable signature.

    torchvision builders take `**kwargs` for their model class, named in the return annotation
    (`resnet18(...) -> ResNet`): the class's arguments with defaults are the ones a builder leaves open.
    """
    source, arch = split_name(name)  # type: ignore[misc]
    if source != "torchvision":
        return None
    builder = _torchvision_builder(arch)
    params = {n: p for n, p in inspect.signature(builder).parameters.items() if p.kind is not p.VAR_KEYWORD}
    cls = typing.get_type_hints(builder).get("return")
    if inspect.isclass(cls):
        for n, p in inspect.signature(cls.__init__).parameters.items():
            if n != "self" and p.default is not p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(n, p)
    return {n: p for n, p in params.items() if n not in _MANAGED}


def check_params(name: str, params: dict[str, Any]) -> None:
    """Reject model keys the builder does not take (exit 2 before any run directory exists)."""
    source, arch = split_name(name)  # type: ignore[misc]
    managed = sorted(set(params) & _MANAGED)
    if managed:
        raise ConfigError(
            f"model.{managed[0]}: taktstock sets this from the data and model.weights/model.pretrained; remove it from the config"
        )
    if source == "timm":
        _check_timm_name(arch)
        import torch

        # timm passes unknown keys on to the model class: build once on the meta device (no memory, no init cost).
        try:
            with torch.device("meta"):
                _timm().create_model(arch, pretrained=False, **params)
        except TypeError as exc:
            raise ConfigError(f"model: timm:{arch} rejects the given arguments ({exc})") from None
        return
    accepted = builder_params(name)
    if accepted is None:
        return
    for key in params:
        if key not in accepted:
            raise ConfigError(f"model.{key}: {name} has no argument '{key}' (it takes: {', '.join(sorted(accepted))})")


def image_channels(input_shape: tuple[int, ...]) -> int:
    """Channels of an image input (C, H, W); a 2-D (H, W) input has one."""
    return 1 if len(input_shape) == 2 else int(input_shape[0])


def build(
    name: str,
    params: dict[str, Any],
    input_shape: tuple[int, ...],
    num_outputs: int,
    hf_config: dict[str, Any] | None = None,
    task: str = "classification",
    vocab_size: int | None = None,
) -> nn.Module:
    """The architecture of `name` with a `num_outputs` head and a first layer that fits `input_shape`
    (`vocab_size`: the token inputs' vocabulary from the sample spec, for hf: text models)."""
    source, arch = split_name(name)  # type: ignore[misc]
    if source == "hf":
        from taktstock.models.hf import build_hf

        return build_hf(arch, params, input_shape, num_outputs, hf_config, task, vocab_size)
    try:
        if source == "timm":
            _check_timm_name(arch)
            return _timm().create_model(arch, pretrained=False, num_classes=num_outputs, in_chans=image_channels(input_shape), **params)
        builder = _torchvision_builder(arch)
        kwargs = {"num_classes": num_outputs} | params
        accepted = builder_params(name) or {}
        if "image_size" in accepted and "image_size" not in params and len(input_shape) >= 2:
            kwargs["image_size"] = int(input_shape[-1])  # ViT's position embeddings follow the data's image size
        model = builder(weights=None, **kwargs)
        adapt_first_conv(model, image_channels(input_shape))
        return model
    except ConfigError:
        raise
    except Exception as exc:  # e.g. a ViT patch size that does not divide the image size
        raise ConfigError(
            f"model: cannot build {name} with {params} for inputs {tuple(input_shape)} ({type(exc).__name__}: {exc})"
        ) from None


def first_conv_name(model: nn.Module) -> str | None:
    """Name of the first Conv2d in registration order (the input layer of torchvision conv nets)."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first Conv2d by one with `channels` inputs (torchvision builders have no in_chans)."""
    name = first_conv_name(model)
    if name is None:
        return
    conv: nn.Conv2d = model.get_submodule(name)  # type: ignore[assignment]
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def pretrained_file(name: str) -> Path:
    """The locally cached pretrained weights of `name`; a one-line error naming the expected path otherwise."""
    source, arch = split_name(name)  # type: ignore[misc]
    if source == "torchvision":
        import torch

        tvm = _torchvision_models()
        try:
            url = tvm.get_model_weights(arch).DEFAULT.url
        except (ValueError, AttributeError, KeyError):
            raise ConfigError(f"model.pretrained: torchvision has no pretrained weights for '{arch}'") from None
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    elif source == "timm":
        _check_timm_name(arch)
        path = _timm_cached_file(arch)
    else:
        raise ConfigError("model.pretrained: hf: models load their weights from model.name (a save_pretrained directory or cached id)")
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained: the {name} weights are not in the local cache (expected {path}); taktstock never downloads: "
            "put the file there, or pass a state dict with model.weights: PATH (.safetensors or .pt)"
        )
    return path


def _timm_cached_file(arch: str) -> Path:
    import torch

    cfg = _timm().models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        repo = "models--" + cfg.hf_hub_id.replace("/", "--")
        return Path(constants.HF_HUB_CACHE) / repo / "snapshots" / "<revision>" / "model.safetensors"
    if cfg is not None and cfg.url:
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
    raise ConfigError(f"model.pretrained: timm has no pretrained weights for '{arch}'")


def list_models(source: str, pattern: str | None = None) -> list[str]:
    """Names a config can use, as `source:name` (builtin: the registered names)."""
    import fnmatch

    if source == "builtin":
        from taktstock.models.registry import available_models

        names = available_models()
    elif source == "torchvision":
        tvm = _torchvision_models()
        names = [f"torchvision:{n}" for n in tvm.list_models(module=tvm)]  # classification models only
    elif source == "timm":
        names = [f"timm:{n}" for n in _timm().list_models()]
    else:
        raise ConfigError(f"--source: expected builtin, torchvision or timm, got '{source}'")
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatchcase(n, glob) or fnmatch.fnmatchcase(n.partition(":")[2], glob)]
    return names
