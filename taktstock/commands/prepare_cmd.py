"""`taktstock prepare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taktstock.commands.common import split_config_args


def register(app: typer.Typer) -> None:
    app.command()(prepare)


def prepare(
    args: Annotated[list[str] | None, typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)] = None,
    to_mds: Annotated[
        Path | None,
        typer.Option(
            "--to-mds", help="Also write the prepared splits as MDS shards into this new directory (data.source: mds reads them)."
        ),
    ] = None,
    shard_size: Annotated[str, typer.Option("--shard-size", help="--to-mds: largest shard file, e.g. 64mb.")] = "64mb",
) -> None:
    """Split and normalise the data once and cache it under data.cache_dir (train does this automatically)."""
    from taktstock.config import load_config
    from taktstock.data.dataset import input_shape
    from taktstock.data.prepare import prepare as run_prepare

    config_path, overrides = split_config_args(args)
    data = run_prepare(load_config(config_path, overrides), verbose=True)
    sizes = ", ".join(f"{s} {len(data.split(s))}" for s in ("train", "val", "test"))
    where = getattr(data, "path", None) or config_path or "data"
    print(f"prepared {where} ({sizes}; input shape {input_shape(data.spec())}, outputs {data.num_outputs})")
    if to_mds is not None:
        from taktstock.data.mds.write import write_mds

        meta = write_mds(data, to_mds, shard_size)
        task = "\n  task: language_modeling" if meta["task"] == "language_modeling" else ""
        print(f"wrote MDS shards to {to_mds}; train from them with\ndata:\n  source: mds\n  path: {to_mds}{task}")
