"""`load_trained_model(run, which)`: the one way to get a trained model out of a run directory.

Used by `evaluate`, `predict`, `export` and MLflow model logging. It needs only the run's files
(config.yaml, preprocessing.json, weights), never the training data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taktstock.checkpoint.manager import load_checkpoint
from taktstock.checkpoint.weights import load_weights
from taktstock.config.loader import load_config
from taktstock.config.schema import Config
from taktstock.errors import ConfigError
from taktstock.run_dir import RunDir


@dataclass
class TrainedModel:
    config: Config
    preprocessing: dict[str, Any]  # RUN_DIR/preprocessing.json: normalisation, input shape, class names
    model: nn.Module  # the plain model in eval mode


def weights_path(run: RunDir, which: str) -> Path:
    """best -> best.safetensors, last -> model.safetensors (the final weights)."""
    weights = {"best": run.best, "last": run.model}.get(which)
    if weights is None:
        raise ConfigError(f"--checkpoint: expected best or last, got '{which}'")
    return weights


def load_trained_model(
    run_dir: str | Path | RunDir, which: str = "best", device: torch.device | None = None, weights: str | None = None
) -> TrainedModel:
    """The run's model with its `which` (best or last) weights; a run interrupted before writing its
    final weights falls back to its last checkpoint. `weights`: ema or raw for a train.ema run (default ema)."""
    from taktstock.models.registry import build_model

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    if not run.config.is_file():
        raise ConfigError(f"not a run directory (no config.yaml): {run.root}")
    path = weights_path(run, which)
    if not run.preprocessing.is_file():
        raise ConfigError(f"{run.root} has no preprocessing.json (written when training starts)")
    config = load_config(run.config)
    prep = json.loads(run.preprocessing.read_text())
    # Token-id fields carry the vocabulary size the embedding needs, index-encoded tables the embedding
    # rows of each categorical column (the dataset seam's sample spec).
    fields = (prep.get("spec") or {}).values()
    vocab = next((f.get("vocab_size") for f in fields if f.get("vocab_size") is not None), None)
    cards = next((f.get("cardinalities") for f in fields if f.get("cardinalities") is not None), None)
    m = config.model
    from taktstock.models.hf import weights_follow

    with weights_follow():  # hf:<dir>: the trained head is loaded below, so the library's "newly initialised" report is false
        model = build_model(
            m.name, m.params(), tuple(prep["input_shape"]), prep["num_outputs"], vocab, m.hf_config, prep.get("task", config.task), cards
        )
    state = _ema_or_raw(run, config, which, weights) if weights is not None else None
    if state is not None:
        model.load_state_dict(state)
    elif path.is_file():
        load_weights(model, path)
    elif (run.checkpoints / "last.pt").is_file():  # training interrupted before final weights were written
        model.load_state_dict(load_checkpoint(run.checkpoints / "last.pt")["model"])
    else:
        raise ConfigError(f"{run.root} has no trained weights yet ({path.name} missing; has training finished?)")
    return TrainedModel(config, prep, model.to(device or torch.device("cpu")).eval())


def _ema_or_raw(run: RunDir, config: Config, which: str, weights: str) -> dict[str, Any] | None:
    """--weights of a train.ema run, whose files hold both: best.safetensors and ema.safetensors the EMA,
    model.safetensors and checkpoints/best.pt ("model") the raw weights. None: the default file of `which`."""
    from safetensors.torch import load_file

    if weights not in ("ema", "raw"):
        raise ConfigError(f"--weights: expected ema or raw, got '{weights}'")
    if config.train.ema is None:
        if weights == "ema":
            raise ConfigError(f"--weights ema: {run.root} was trained without train.ema")
        return None  # the run's only weights are raw
    if weights == "ema":
        if which == "best":
            return None  # best.safetensors
        if not run.ema.is_file():
            raise ConfigError(f"--weights ema: {run.root} has no {run.ema.name} yet (written when training finishes)")
        return load_file(str(run.ema))
    if which == "last":
        return None  # model.safetensors
    best = run.checkpoints / "best.pt"
    if not best.is_file():
        raise ConfigError(f"--weights raw: {run.root} has no checkpoints/best.pt with the raw best weights")
    return load_checkpoint(best)["model"]
