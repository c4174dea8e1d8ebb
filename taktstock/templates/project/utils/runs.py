"""Find the runs `python train.py` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def run_dirs(output_dir: Path) -> list[Path]:
    """Run directories under `output_dir`, oldest first (by their recorded start time)."""
    if not output_dir.is_dir():
        return []
    runs = [d for d in output_dir.iterdir() if (d / "config.yaml").is_file() and (d / "run.json").is_file()]

    def started(run: Path) -> float:
        try:
            return float(json.loads((run / "run.json").read_text()).get("started", 0.0))
        except (OSError, ValueError):
            return 0.0

    return sorted(runs, key=lambda d: (started(d), d.stat().st_mtime, d.name))


def newest_run(config_path: Path) -> Path:
    """The newest run of the experiment output directory named in `config_path`."""
    config = yaml.safe_load(config_path.read_text()) or {}
    output_dir = config_path.parent / (config.get("experiment") or {}).get("output_dir", "experiments/runs")
    runs = run_dirs(output_dir)
    if not runs:
        raise FileNotFoundError(f"no runs in {output_dir}: train one first with `python train.py`")
    return runs[-1]
