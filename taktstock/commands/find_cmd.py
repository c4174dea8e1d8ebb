"""`taktstock find-lr` and `taktstock find-batch-size`: the first-week finders (nothing is written to any run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taktstock.commands.common import split_config_args

if TYPE_CHECKING:
    from taktstock.config.schema import Config


def register(app: typer.Typer) -> None:
    app.command("find-lr", context_settings={"allow_interspersed_args": True})(find_lr)
    app.command("find-batch-size", context_settings={"allow_interspersed_args": True})(find_batch_size)


_ARGS = typer.Argument(help="CONFIG file, then key.path=value overrides.", show_default=False)


def find_lr(
    args: Annotated[list[str] | None, _ARGS] = None,
    steps: Annotated[int, typer.Option("--steps", min=5, help="Most optimizer steps of the test (it stops early on divergence).")] = 100,
    min_lr: Annotated[float, typer.Option("--min-lr", help="First learning rate.")] = 1e-7,
    max_lr: Annotated[float, typer.Option("--max-lr", help="Last learning rate.")] = 10.0,
    out: Annotated[Path | None, typer.Option("--out", help="Plot (PNG); default: <experiment.name>-lr-find.png here.")] = None,
    apply: Annotated[
        Path | None, typer.Option("--apply", help="Write the config with optim.lr set to the suggestion to this YAML file.")
    ] = None,
    nproc_per_node: Annotated[
        int | None, typer.Option("--nproc-per-node", help="Run the test on N processes (torchrun), as train.")
    ] = None,
) -> None:
    """Learning-rate range test: taktstock find-lr config.yaml --apply config-lr.yaml"""
    from taktstock.config import load_config
    from taktstock.errors import UserError

    config_path, overrides = split_config_args(args)
    if not 0 < min_lr < max_lr:
        raise UserError(f"--min-lr must be positive and below --max-lr, got {min_lr:g} and {max_lr:g}")
    config = load_config(config_path, overrides)
    out = out or Path(f"{config.experiment.name}-lr-find.png")
    _check_writable(out, "--out")
    _check_writable(apply, "--apply")
    if nproc_per_node is not None:
        worker = ["find-lr", *([str(config_path)] if config_path else []), *overrides]
        _launch_workers(nproc_per_node, config, worker, steps, min_lr, max_lr, out, apply)
        return
    from taktstock.training.distributed import setup_distributed, teardown_distributed
    from taktstock.training.lr_finder import find_lr as run_finder
    from taktstock.training.lr_finder import plot_lr_finder
    from taktstock.training.probe import Probe

    dist = setup_distributed(config)
    try:
        result = run_finder(Probe.build(config, dist), steps, min_lr, max_lr)
    finally:
        teardown_distributed(dist)
    if not dist.is_main:
        return  # rank 0 reports for the group
    plot_lr_finder(result, str(out), config.experiment.name)
    where = f"{len(result.lrs)} steps, lr {min_lr:.1e} .. {result.lrs[-1]:.1e}" if result.lrs else "no finite loss"
    print(f"lr range test: {where} ({result.stopped}); plot: {out}", file=sys.stderr)
    if result.suggestion is None:
        raise UserError(f"find-lr: too few steps ({len(result.lrs)}) for a suggestion: raise --steps or lower --min-lr")
    print(f"suggested optim.lr: {result.suggestion:.3g} (steepest descent of the smoothed loss; configured {config.optim.lr:g})")
    if apply is not None:
        _write(_with_lr(config, result.suggestion), apply)


def _check_writable(path: Path | None, option: str) -> None:
    """A file the command will write: its directory must exist (checked before minutes of work, not after)."""
    if path is not None and not path.resolve().parent.is_dir():
        from taktstock.errors import UserError

        raise UserError(f"{option} {path}: the directory {path.resolve().parent} does not exist")


def _with_lr(config: Config, lr: float) -> Config:
    """optim.lr = lr; parameter groups with their own lr keep their ratio to it, as during the test."""
    lr = float(f"{lr:.3g}")
    scale = lr / config.optim.lr
    groups = [g.model_copy(update={"lr": g.lr * scale}) if g.lr is not None else g for g in config.optim.param_groups]
    optim = config.optim.model_copy(update={"lr": lr, "param_groups": groups})
    return config.model_copy(update={"optim": optim})


def _write(config: Config, path: Path) -> None:
    from taktstock.config.loader import load_config, save_config

    save_config(config, path)
    load_config(path)  # what was written must load back
    print(f"wrote {path}")


def _launch_workers(
    n: int, config: Config, worker: list[str], steps: int, min_lr: float, max_lr: float, out: Path, apply: Path | None
) -> None:
    from taktstock.commands.launch import LaunchFailed, LaunchOptions, check_devices, run_workers
    from taktstock.training.distributed import check_world_size

    opts = LaunchOptions(nproc_per_node=n)
    check_world_size(config, n)
    check_devices(config, n)
    worker += ["--steps", str(steps), "--min-lr", repr(min_lr), "--max-lr", repr(max_lr), "--out", str(out.resolve())]
    if apply is not None:
        worker += ["--apply", str(apply.resolve())]
    try:
        run_workers(opts, worker)
    except LaunchFailed as exc:
        if exc.message:
            print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)


def find_batch_size(
    args: Annotated[list[str] | None, _ARGS] = None,
    largest: Annotated[int | None, typer.Option("--max", min=1, help="Largest micro-batch to try (default: the global batch).")] = None,
    memory_budget: Annotated[
        float | None,
        typer.Option(
            "--memory-budget", min=0.001, help="MB a micro-batch step may use (needed on CPU; on CUDA in addition to the real limit)."
        ),
    ] = None,
    world_size: Annotated[
        int, typer.Option("--world-size", min=1, help="Plan for a run on this many processes: the micro-batch is per process.")
    ] = 1,
    apply: Annotated[
        Path | None,
        typer.Option("--apply", help="Write the config with train.batch_size and train.accumulate_grad_batches set to this YAML file."),
    ] = None,
) -> None:
    """Largest micro-batch that fits, the global batch unchanged: taktstock find-batch-size config.yaml"""
    from taktstock.config import load_config
    from taktstock.errors import UserError
    from taktstock.training.batch_size_finder import find_batch_size as run_finder
    from taktstock.training.distributed import DistEnv
    from taktstock.training.probe import Probe

    config_path, overrides = split_config_args(args)
    config = load_config(config_path, overrides)
    _check_writable(apply, "--apply")
    if DistEnv.from_environ().enabled:
        raise UserError("find-batch-size measures one process: run it without torchrun (use --world-size to plan a multi-process run)")
    t = config.train
    probe = Probe.build(config, DistEnv())
    if probe.device.type != "cuda" and memory_budget is None:
        print(
            f"note: on {probe.device.type} nothing limits the search but --memory-budget and real allocation failures: "
            "the largest candidate is taken",
            file=sys.stderr,
        )
    global_batch, tried = run_finder(probe, largest, memory_budget, world_size)
    if not tried:
        raise UserError(
            f"find-batch-size: the global batch {global_batch} (train.batch_size {t.batch_size} x accumulate_grad_batches "
            f"{t.accumulate_grad_batches}) cannot be split into equal micro-batches over --world-size {world_size} "
            f"in parts of at most {'--max ' + str(largest) + ' and ' if largest else ''}"
            f"the {len(probe.data.split('train'))} training samples"
        )
    kind = "peak allocated" if probe.device.type == "cuda" else "estimate"
    rows: list[dict[str, Any]] = []
    for c in tried:
        rows.append(
            {
                "micro-batch": c.micro,
                "accumulate": c.accumulate,
                f"memory MB ({kind})": "-" if c.memory_mb is None else f"{c.memory_mb:,.2f}",
                "samples/s": "-" if c.samples_per_s is None else f"{c.samples_per_s:,.0f}",
                "fits": "yes" if c.fits else f"no: {c.reason}",
            }
        )
    _print_rows(rows, f"micro-batches on {probe.device} (global batch {global_batch})")
    fitting = [c for c in tried if c.fits]
    if not fitting:
        raise UserError(f"find-batch-size: not even a micro-batch of {tried[0].micro} fits ({tried[0].reason})")
    best = fitting[-1]
    rank_note = f" x {world_size} processes" if world_size > 1 else ""
    print(
        f"micro-batch {best.micro}{rank_note} x {best.accumulate} accumulation = global batch {global_batch} (as configured): "
        f"train.batch_size={best.micro * world_size} train.accumulate_grad_batches={best.accumulate}"
    )
    if apply is not None:
        train = t.model_copy(update={"batch_size": best.micro * world_size, "accumulate_grad_batches": best.accumulate})
        _write(config.model_copy(update={"train": train}), apply)


def _print_rows(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
