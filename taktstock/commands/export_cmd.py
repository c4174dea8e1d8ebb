"""`taktstock export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(export)


def export(
    run_dir: Annotated[str, typer.Argument(help="Run directory written by train, or its URL (s3://...).")],
    format: Annotated[str, typer.Option("--format", help="onnx, torchscript or safetensors.")] = "onnx",
    checkpoint: Annotated[str, typer.Option(help="Weights to export: best or last.")] = "best",
    out: Annotated[Path | None, typer.Option(help="Output file (default RUN_DIR/export/model.<ext>).")] = None,
    weights: Annotated[str | None, typer.Option(help="train.ema runs: ema (default) or raw weights.")] = None,
) -> None:
    """Write a self-contained model (normalisation included: raw features in) and check it against PyTorch."""
    if format == "onnx":
        from taktstock.utils.imports import optional_import

        for module in ("onnx", "onnxscript", "onnxruntime"):  # torch.onnx.export needs onnx + onnxscript; the check, onnxruntime
            optional_import(module, "export", "taktstock export --format onnx")
    from taktstock.deploy.export import export as run_export
    from taktstock.remote.location import opened_run

    with opened_run(run_dir, write_back=() if out else ("export",)) as local:
        path, diff = run_export(local, format, checkpoint, out, weights=weights)
    print(f"wrote {path} (checked: max difference to PyTorch {diff:.2g})")
