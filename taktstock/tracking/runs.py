"""Local run directories as a table (`taktstock runs`) and side by side (`taktstock compare`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taktstock.errors import UserError
from taktstock.run_dir import RunDir
from taktstock.tracking.jsonl import read_metrics
from taktstock.utils.dicts import flatten_dict
from taktstock.utils.process import is_alive

_SKIP = {"checkpoints", "tensorboard", "wandb", "plots", "eval"}


def find_runs(root: Path, max_depth: int = 4) -> list[RunDir]:
    """Run directories (those with a run.json) under `root`, root itself included."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs: directory not found: {root}")
    found: list[RunDir] = []

    def walk(d: Path, depth: int) -> None:
        if (d / "run.json").is_file():
            found.append(RunDir(d))
            return
        if depth >= max_depth:
            return
        for child in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in _SKIP and not p.name.startswith(".")):
            walk(child, depth + 1)

    walk(root, 0)
    return found


def run_summary(run: RunDir) -> dict[str, Any]:
    """What `taktstock runs` shows for one run, from run.json."""
    info = run.read_info()
    started, ended = info.get("started"), info.get("ended")
    if info.get("steps") is None or info.get("best") is None:
        info = _from_checkpoint(run, info)
    return {
        "run": run.root.name,
        "path": str(run.root),
        "experiment": info.get("name", ""),
        "status": _status(info),
        "monitor": info.get("monitor", ""),
        "best": info.get("best"),
        "steps": info.get("steps"),
        "duration_s": round(ended - started, 1) if started and ended and ended >= started else None,
        "started": started,
    }


def _from_checkpoint(run: RunDir, info: dict[str, Any]) -> dict[str, Any]:
    """A run killed before it recorded steps and best (SIGKILL, OOM): both as of its newest checkpoint.

    The steps are the newest checkpoint's (where --resume continues); the best is the best monitored
    value logged up to that step (later points are dropped on resume).
    """
    try:
        steps = int(json.loads((run.checkpoints / "last.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return info
    out = {**info, "steps": info.get("steps") if info.get("steps") is not None else steps}
    monitor = info.get("monitor")
    if info.get("best") is None and monitor and run.metrics.is_file():
        try:
            mode = (yaml.safe_load(run.config.read_text()) or {}).get("metrics", {}).get("mode", "min")
        except (OSError, yaml.YAMLError, AttributeError):
            mode = "min"
        try:
            records = read_metrics(run.metrics)
        except ValueError:  # a line cut by the kill
            records = []
        values = [r[monitor] for r in records if isinstance(r.get(monitor), int | float) and r.get("step", 0) <= steps]
        if values:
            out["best"] = max(values) if mode == "max" else min(values)
    return out


def _status(info: dict[str, Any]) -> str:
    """run.json's status, except that a "running" run whose process is gone was killed (SIGKILL, OOM,
    power loss) before it could record its end: "interrupted", resumable with --resume."""
    status = info.get("status", "unknown")
    if status == "running" and isinstance(info.get("process"), dict) and is_alive(info["process"]) is False:
        return "interrupted"
    return status


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Summaries of every run under `root`, oldest first."""
    rows = [run_summary(r) for r in find_runs(root)]
    return sorted(rows, key=lambda r: (r["started"] or 0, r["path"]))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


@dataclass
class Comparison:
    labels: list[str]
    config_diff: dict[str, list[Any]] = field(default_factory=dict)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)
    plot: Path | None = None
    metric: str = ""


def _open_run(path: Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.config.is_file():
        raise UserError(f"compare: not a run directory (no config.yaml): {path}")
    return run


def final_metrics(run: RunDir) -> dict[str, float]:
    """Last logged value of every metric, the best monitored value, and evaluate's metrics."""
    out: dict[str, float] = {}
    for record in read_metrics(run.metrics) if run.metrics.is_file() else []:
        out.update({k: v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))})
    info = run.read_info()
    if info.get("best") is not None and info.get("monitor"):
        out[f"best {info['monitor']}"] = info["best"]
    eval_file = run.eval_dir / "metrics.json"
    if eval_file.is_file():
        out.update(json.loads(eval_file.read_text()).get("metrics", {}))
    return out


def _labels(runs: list[RunDir]) -> list[str]:
    names = [r.root.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.root) for r in runs]


def compare_runs(paths: list[Path], metric: str | None = None, plot: Path | None = None) -> Comparison:
    """Config keys that differ, final metrics side by side, and an overlaid learning curve of `metric`."""
    if len(paths) < 2:
        raise UserError("compare: give at least two run directories")
    runs = [_open_run(p) for p in paths]
    labels = _labels(runs)
    configs = [flatten_dict(yaml.safe_load(r.config.read_text()) or {}) for r in runs]
    keys = sorted(set().union(*configs))
    diff = {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1}
    finals = [final_metrics(r) for r in runs]
    names = sorted(set().union(*finals), key=lambda k: (k.startswith("best"), k))
    comparison = Comparison(labels, diff, {k: [f.get(k) for f in finals] for k in names})
    comparison.metric = metric or runs[0].read_info().get("monitor") or "val/loss"
    records = {label: read_metrics(r.metrics) if r.metrics.is_file() else [] for label, r in zip(labels, runs, strict=True)}
    if not any(comparison.metric in rec for recs in records.values() for rec in recs):
        # Only metrics.jsonl has curves: the best value and evaluate's metrics are single numbers.
        curves = sorted({k for recs in records.values() for rec in recs for k in rec if k not in ("step", "epoch")})
        raise UserError(f"compare --metric: no run logged '{comparison.metric}' (curves: {', '.join(curves) or 'none'})")
    from taktstock.tracking.plots import overlay_curves

    out = Path(plot) if plot else Path(f"compare-{comparison.metric.replace('/', '_')}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    comparison.plot = overlay_curves(records, comparison.metric, out)
    return comparison
