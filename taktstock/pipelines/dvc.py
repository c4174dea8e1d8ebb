"""Generate a dvc.yaml (prepare -> train -> evaluate -> promote) for an experiment config.

Every stage calls the taktstock CLI. Outputs live at stable paths under pipeline.run_dir so DVC can cache
them: the prepared arrays (data.cache_dir pointed there), the trained weights, the evaluation metrics.
Parameters point at the keys of the config file each stage reads, so changing optim.lr re-runs train,
evaluate and promote but not prepare. Keys absent from the file are at their defaults and are not
tracked until they are written into the file (re-generate the dvc.yaml after adding a section).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import yaml

import taktstock
from taktstock.config.loader import load_config, read_yaml
from taktstock.config.schema import Config
from taktstock.errors import UserError
from taktstock.pipelines.paths import pipeline_dir

# Keys of the config that change the prepared arrays (see data/prepare.py fingerprint).
PREPARE_KEYS = (
    "seed",
    "data.source",
    "data.path",
    "data.target",
    "data.features",
    "data.kwargs",
    "data.task",
    "data.val_fraction",
    "data.test_fraction",
    "data.stratify",
    "data.normalize",
    "loss.name",
)
# Sections that do not change the trained weights.
NOT_TRAINING = ("experiment", "pipeline", "tune")
PROMOTE_KEYS = ("experiment.name", "metrics", "pipeline.promote_metric", "logging.mlflow")

# Package folders each stage executes (tracked only when the package lives inside the project).
CODE = {
    "prepare": ("config", "data"),
    "train": ("config", "data", "models", "training", "checkpoint", "metrics", "tracking"),
    "evaluate": ("evaluation", "metrics", "models"),
    "promote": ("pipelines",),
}


def _present(raw: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The dotted keys that exist in the raw YAML (DVC refuses params missing from the file)."""
    out = []
    for key in keys:
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            out.append(key)
    return out


def _code_deps(project: Path, stage: str) -> list[str]:
    package = Path(taktstock.__file__).resolve().parent
    try:
        rel = package.relative_to(project.resolve())
    except ValueError:
        return []  # an installed package: its version is not a file in the project
    return [(rel / sub).as_posix() for sub in CODE[stage]]


def _uncached(paths: list[str]) -> list[dict[str, dict[str, bool]]]:
    return [{p: {"cache": False}} for p in paths]


def generate(config_path: Path, project: Path, python: str = "python", overrides: list[str] | None = None) -> str:
    """The dvc.yaml text for `config_path`, with paths relative to `project` (where dvc.yaml lives).

    `overrides` (key.path=value) are applied here and passed on to the prepare and train commands.
    """
    project = project.resolve()
    try:
        cfg_rel = Path(os.path.relpath(config_path.resolve(), project))
    except ValueError:
        cfg_rel = config_path
    if cfg_rel.parts and cfg_rel.parts[0] == "..":
        raise UserError(f"{config_path} is outside {project}: DVC tracks only files inside the project")
    raw, _ = read_yaml(config_path)
    config = load_config(config_path, overrides)
    return yaml.safe_dump(_stages(config, raw, cfg_rel.as_posix(), project, python, overrides or []), sort_keys=False, width=200)


def _stages(config: Config, raw: dict[str, Any], cfg: str, project: Path, python: str, overrides: list[str]) -> dict[str, Any]:
    base = pipeline_dir(config).as_posix()
    prepared, run = f"{base}/prepared", f"{base}/run"
    cli = f"{shlex.quote(python)} -m taktstock"
    q = shlex.quote
    cfg_params = lambda keys: [{cfg: keys}] if keys else []  # noqa: E731
    # Before the pipeline's own data.cache_dir: the stage paths win. A changed override changes the
    # command, which DVC treats as a changed stage.
    user = "".join(f" {q(o)}" for o in overrides)

    data_deps = []
    if config.data.source in ("csv", "npz") and config.data.path:
        data_deps.append(config.data.path)

    train_keys = [k for k in raw if k not in NOT_TRAINING]
    train_outs: list[Any] = [f"{run}/{f}" for f in ("config.yaml", "preprocessing.json", "best.safetensors", "model.safetensors")]
    # Written on every run but not reproducible byte for byte (timings), so kept out of the cache;
    # listing them makes DVC clear them before train re-runs in the same directory.
    # TensorBoard's event files lie in the run directory itself (a DVC out cannot be a glob): train
    # clears an earlier run's event files itself.
    volatile = [f"{run}/checkpoints", f"{run}/metrics.jsonl", f"{run}/run.json"]
    train: dict[str, Any] = {
        "cmd": f"{cli} train {q(cfg)}{user} data.cache_dir={q(prepared)} --run-dir {q(run)}",
        "deps": [prepared, *_code_deps(project, "train")],
        "params": cfg_params(train_keys),
        "outs": train_outs + _uncached(volatile),
    }
    if config.logging.plots:
        train["plots"] = _uncached([f"{run}/plots/learning_curves.png"])

    evaluate: dict[str, Any] = {
        "cmd": f"{cli} evaluate {q(run)}",
        "deps": [prepared, f"{run}/config.yaml", f"{run}/preprocessing.json", f"{run}/best.safetensors", *_code_deps(project, "evaluate")],
        "metrics": _uncached([f"{run}/eval/metrics.json"]),
    }
    if config.task == "classification":
        evaluate["outs"] = _uncached([f"{run}/eval/report.json"])
        evaluate["plots"] = _uncached([f"{run}/eval/confusion_matrix.png"])

    stages: dict[str, Any] = {
        "prepare": {
            "cmd": f"{cli} prepare {q(cfg)}{user} data.cache_dir={q(prepared)}",
            # Without any dependency DVC would re-run prepare every time; the config file is the fallback.
            "deps": [*data_deps, *_code_deps(project, "prepare")] or ([] if _present(raw, PREPARE_KEYS) else [cfg]),
            "params": cfg_params(_present(raw, PREPARE_KEYS)),
            "outs": [prepared],
        },
        "train": train,
        "evaluate": evaluate,
        "promote": {
            "cmd": f"{cli} promote {q(run)}",
            "deps": [f"{run}/eval/metrics.json", f"{run}/best.safetensors", *_code_deps(project, "promote")],
            "params": cfg_params(_present(raw, PROMOTE_KEYS)),
            "outs": _uncached([f"{run}/promotion.json"]),
        },
    }
    for stage in stages.values():
        for key in ("deps", "params"):
            if not stage.get(key):
                stage.pop(key, None)
    return {"stages": stages}
