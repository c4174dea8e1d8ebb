"""`taktstock train CONFIG --fast-dev-run [N]`: the whole training path on N training and N validation
batches, one epoch, without keeping anything.

It is a real run (the same `training.run.train`, so the same builders, step, validation, checkpoint and
final-weights code paths run once), in a temporary run directory that is deleted afterwards, with every
tracker and the plots off. Only the prepared-data cache stays, as with `--dry-run`.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


# What a debug run overrides: one short epoch, no trackers, no plots, no profiler window.
def fast_dev_overrides(n: int) -> list[str]:
    return [
        "train.epochs=1",
        "train.max_steps=null",
        f"train.limit_train_batches={n}",
        f"train.limit_val_batches={n}",
        "train.overfit_batches=null",
        "train.profile=null",
        "logging.tensorboard=false",
        "logging.mlflow.enabled=false",
        "logging.wandb.enabled=false",
        "logging.plots=false",
        "early_stopping.enabled=false",
    ]


def take_count(args: list[str] | None) -> tuple[int, list[str]]:
    """N of `--fast-dev-run [N]` and the other positional arguments.

    The flag takes an optional number (typer options cannot), so N arrives as a positional argument: the
    first one that is a whole number (a config file is never named like that; overrides hold '=')."""
    rest = list(args or [])
    for i, arg in enumerate(rest):
        if arg.lstrip("-").isdigit():
            return int(arg), rest[:i] + rest[i + 1 :]
    return 1, rest


def fast_dev_run(n: int, overrides: list[str], run: Callable[[list[str], Path], None]) -> None:
    """Call `run(overrides, run_dir)` with the debug overrides and a temporary run directory, then delete it."""
    if n < 1:
        from taktstock.errors import UserError

        raise UserError(f"--fast-dev-run must be at least 1, got {n}")
    banner = f"fast dev run: {n} training and {n} validation batch(es), one epoch; checkpoints, trackers and run files are not kept"
    print(f"=== {banner} ===", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="taktstock-fast-dev-run-") as tmp:
        run([*overrides, *fast_dev_overrides(n)], Path(tmp) / "run")
    print(f"=== fast dev run passed ({n} batch(es)); nothing was kept ===", file=sys.stderr)
