"""`taktstock generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(generate)


def generate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a language model (data.source: corpus).")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1, help="Sample from the k most likely tokens only.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the sampling generator (same seed, same text).")] = 0,
    checkpoint: Annotated[str, typer.Option(help="Weights: best or last.")] = "best",
) -> None:
    """Print the prompt followed by a sampled continuation."""
    from taktstock.deploy.generate import generate as run_generate

    typer.echo(run_generate(run_dir, prompt, max_new_tokens, temperature, top_k, seed, checkpoint))
