"""End to end: this project's config trains for one epoch and leaves usable weights."""

import math
from pathlib import Path

from taktstock import load_config, train

ROOT = Path(__file__).resolve().parents[1]


def test_config_trains_one_epoch_and_writes_weights(tmp_path):
    overrides = [
        f"experiment.output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'prepared'}",
        "train.epochs=1",
        "early_stopping.enabled=false",
        "logging.tensorboard=false",
        "logging.plots=false",
    ]
    result = train(load_config(ROOT / "config.yaml", overrides))
    assert result.stop_reason == "completed"
    assert (result.run_dir / "best.safetensors").is_file()
    assert result.final_metrics and all(math.isfinite(v) for v in result.final_metrics.values())
