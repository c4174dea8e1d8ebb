"""Sweep results, the same for every backend: trials.csv, best.yaml, plots/ and a printed summary."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taktstock.config.loader import config_to_yaml
from taktstock.config.paths import with_absolute_paths
from taktstock.tuning.space import SearchSpace


@dataclass
class TrialRecord:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL (RUNNING only while other machines still work on a shared study)
    value: float | None
    params: dict[str, Any]  # as sampled (storage encoding)
    duration_s: float | None = None
    run_dir: str | None = None
    reason: str | None = None
    epochs: int | None = None  # validations reported
    extra: dict[str, Any] = field(default_factory=dict)


def records_from_study(study: Any) -> list[TrialRecord]:
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        duration = t.user_attrs.get("duration_s")
        if duration is None and t.datetime_start and t.datetime_complete:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        out.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                value=t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                params=dict(t.params),
                duration_s=duration,
                run_dir=t.user_attrs.get("run_dir"),
                reason=t.user_attrs.get("fail_reason"),
                epochs=len(t.intermediate_values),
            )
        )
    return out


def best_record(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    done = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    if not done:
        return None
    return (max if mode == "max" else min)(done, key=lambda r: (r.value, -r.number))  # ties: the earliest trial


def write_trials_csv(records: list[TrialRecord], space: SearchSpace, path: Path) -> None:
    keys = [d.key for d in space.dims]
    decoded = [space.decode(r.params) for r in records]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "value", *keys, "duration_s", "validations", "run_dir", "reason"])
        for r, params in zip(records, decoded, strict=True):
            w.writerow(
                [
                    r.number,
                    r.state,
                    "" if r.value is None else repr(float(r.value)),
                    *[_cell(params.get(k)) for k in keys],
                    "" if r.duration_s is None else f"{r.duration_s:.3f}",
                    "" if r.epochs is None else r.epochs,
                    r.run_dir or "",
                    r.reason or "",
                ]
            )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def write_best_yaml(best: TrialRecord, space: SearchSpace, study: str, path: Path) -> None:
    """The complete config of the best trial, ready for `taktstock train best.yaml`."""
    # With the paths as the trial's run recorded them (absolute): best.yaml is that run's config.yaml.
    config = with_absolute_paths(space.trial_config(best.params))
    header = (
        f"# Best trial {best.number} of sweep '{study}': {space.monitor} = {best.value!r} ({space.mode}).\n"
        f"# Reproduce: taktstock train {path.name}\n"
    )
    path.write_text(header + config_to_yaml(config))


def write_plots(records: list[TrialRecord], space: SearchSpace, plots_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances (Optuna's matplotlib plots); a plot that cannot be made is skipped."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = space.distributions()
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
    for r in records:
        if r.state not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        complete = r.state == "COMPLETE" and r.value is not None
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState[r.state],
                value=r.value if complete else None,
                params={k: v for k, v in r.params.items() if k in dists},
                distributions={k: dists[k] for k in r.params if k in dists},
            )
        )
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    makers = {"optimization_history.png": ovm.plot_optimization_history, "param_importances.png": ovm.plot_param_importances}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings of optuna.visualization.matplotlib
                ax = make(study, target_name=space.monitor)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(plots_dir / name, dpi=100)
            plt.close(fig)
            written.append(plots_dir / name)
        except Exception as exc:  # e.g. importances need two completed trials with varied parameters
            (plots_dir / name).unlink(missing_ok=True)
            print(f"note: no {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return written


def print_summary(records: list[TrialRecord], space: SearchSpace, best: TrialRecord | None, sweep_dir: Path, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = {s: sum(1 for r in records if r.state == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    title = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    table = Table(title=f"sweep {sweep_dir}: {title}", show_header=True)
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column(space.monitor, justify="right")
    for d in space.dims:
        table.add_column(d.key)
    table.add_column("s", justify="right")
    done = [r for r in records if r.value is not None]
    done.sort(key=lambda r: r.value if space.mode == "min" else -r.value)  # type: ignore[operator]
    shown = done[:top] + [r for r in records if r.state == "FAIL"][:3]
    for r in shown:
        params = space.decode(r.params)
        table.add_row(
            str(r.number) + (" *" if best is not None and r.number == best.number else ""),
            r.state,
            "" if r.value is None else f"{r.value:.4f}",
            *[_short(params.get(d.key)) for d in space.dims],
            "" if r.duration_s is None else f"{r.duration_s:.1f}",
        )
    Console(width=140).print(table)
    for r in [r for r in records if r.state == "FAIL"][:3]:
        print(f"trial {r.number} failed: {r.reason}")
    if best is not None:
        print(f"best trial {best.number}: {space.monitor} = {best.value:.6g}; config: {sweep_dir / 'best.yaml'}")
    else:
        print("no trial completed: no best.yaml")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_outputs(records: list[TrialRecord], space: SearchSpace, study: str, sweep_dir: Path, plots: bool = True) -> TrialRecord | None:
    """trials.csv, best.yaml, plots and the summary table; returns the best trial."""
    records = sorted(records, key=lambda r: r.number)
    write_trials_csv(records, space, sweep_dir / "trials.csv")
    best = best_record(records, space.mode)
    if best is not None:
        write_best_yaml(best, space, study, sweep_dir / "best.yaml")
    if plots and any(r.value is not None for r in records):
        write_plots(records, space, sweep_dir / "plots")
    print_summary(records, space, best, sweep_dir)
    return best
