"""End to end: this project's config trains (a few steps) and leaves usable weights."""

import math
from pathlib import Path

from taktstock import load_config, train

ROOT = Path(__file__).resolve().parents[1]


def test_config_trains_a_few_steps_and_writes_weights(tmp_path):
    overrides = [
        f"experiment.output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'prepared'}",
        "train.max_steps=5",
        "early_stopping.enabled=false",
        "logging.tensorboard=false",
        "logging.plots=false",
    ]
    result = train(load_config(ROOT / "config.yaml", overrides))
    assert result.steps == 5 and result.stop_reason == "max_steps"
    assert (result.run_dir / "best.safetensors").is_file()
    assert result.final_metrics and all(math.isfinite(v) for v in result.final_metrics.values())
