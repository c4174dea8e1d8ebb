"""The run directory: a contract shared by train, evaluate, resume, runs/compare, tune and pipelines.

RUN_DIR/config.yaml         resolved config
RUN_DIR/run.json            status, timings, best metric (for `taktstock runs`)
RUN_DIR/metrics.jsonl       logged metrics
RUN_DIR/samples.jsonl       logging.samples: text continuations sampled at validation (language models)
RUN_DIR/checkpoints/        periodic checkpoints, last, best
RUN_DIR/model.safetensors   final weights
RUN_DIR/best.safetensors    best weights by the monitored metric (train.ema: the EMA's)
RUN_DIR/ema.safetensors     train.ema: the final EMA weights
RUN_DIR/preprocessing.json  normalisation and class names, for predict/export
RUN_DIR/tokenizer.json      text runs: the tokenizer, for predict/generate
RUN_DIR/eval/               evaluate's metrics.json, report.json, confusion_matrix.png
RUN_DIR/events.out.tfevents.*  TensorBoard event files (in the run directory: TensorBoard names the run after it)
RUN_DIR/plots/              learning curves
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taktstock.utils.atomic import atomic_write_text


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def new(cls, output_dir: str | Path, name: str) -> RunDir:
        base = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, i = base, 1
        while path.exists():
            path, i = base.with_name(f"{base.name}-{i}"), i + 1
        return cls(path)

    config = property(lambda self: self.root / "config.yaml")
    info = property(lambda self: self.root / "run.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    samples = property(lambda self: self.root / "samples.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    model = property(lambda self: self.root / "model.safetensors")
    best = property(lambda self: self.root / "best.safetensors")
    ema = property(lambda self: self.root / "ema.safetensors")
    preprocessing = property(lambda self: self.root / "preprocessing.json")
    eval_dir = property(lambda self: self.root / "eval")
    events_dir = property(lambda self: self.root)  # TensorBoard names a run by its event files' directory

    def event_files(self) -> list[Path]:
        """TensorBoard event files of this run (and of a run written before they moved out of tensorboard/)."""
        return sorted([*self.root.glob("events.out.tfevents.*"), *(self.root / "tensorboard").glob("events.out.tfevents.*")])

    plots = property(lambda self: self.root / "plots")

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info.read_text())
        except (OSError, ValueError):
            return {}

    def update_info(self, **fields: Any) -> None:
        info = self.read_info() | fields
        atomic_write_text(self.info, json.dumps(info, indent=2))
