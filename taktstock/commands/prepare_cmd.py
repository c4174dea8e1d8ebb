"""`taktstock prepare`."""

from __future__ import annotations

from typing import Annotated

import typer

from taktstock.commands.common import split_config_args


def register(app: typer.Typer) -> None:
    app.command()(prepare)


def prepare(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
) -> None:
    """Split and normalise the data once and cache it under data.cache_dir (train does this automatically)."""
    from taktstock.config import load_config
    from taktstock.data.images import IMAGE_SOURCES
    from taktstock.data.prepare import prepare as run_prepare

    config_path, overrides = split_config_args(args)
    config = load_config(config_path, overrides)
    if config.data.source in IMAGE_SOURCES:
        from taktstock.data.images.prepare import prepare_images

        images = prepare_images(config, verbose=True)
        sizes = ", ".join(f"{s} {len(images.split(s))}" for s in ("train", "val", "test"))
        skipped = f"; {len(images.skipped)} unreadable file(s) left out" if images.skipped else ""
        print(f"prepared {images.path} ({sizes}; input shape {images.input_shape}, outputs {images.num_outputs}{skipped})")
        return
    data = run_prepare(config, verbose=True)
    sizes = ", ".join(f"{s} {len(data.split(s)[1])}" for s in ("train", "val", "test"))
    print(f"prepared {data.path} ({sizes}; input shape {data.input_shape}, outputs {data.num_outputs})")
