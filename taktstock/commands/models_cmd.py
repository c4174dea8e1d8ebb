"""`taktstock models`: the model names a config can use (built-in, torchvision, timm)."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(models)


def models(
    source: Annotated[
        list[str] | None, typer.Option("--source", help="builtin, torchvision or timm (repeatable); default: all installed.")
    ] = None,
    filter_: Annotated[str | None, typer.Option("--filter", help="Glob or substring of the name, e.g. 'resnet*' or convnext.")] = None,
) -> None:
    """List model names for `model.name` (hf: takes a save_pretrained directory or a cached Hugging Face id)."""
    import importlib.util

    from taktstock.models.zoo import list_models

    sources = source or [s for s in ("builtin", "torchvision", "timm") if s == "builtin" or importlib.util.find_spec(s) is not None]
    for name in sources:
        for model in list_models(name, filter_):
            print(model)
