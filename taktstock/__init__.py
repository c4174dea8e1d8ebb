"""taktstock: one YAML file describes an experiment; taktstock prepares, trains, checkpoints, logs and evaluates it.

Python API (imports are lazy so `import taktstock` and the CLI start fast):

    from taktstock import load_config, train, evaluate
    result = train(load_config("config.yaml", ["train.epochs=5"]))
    evaluate(result.run_dir)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from taktstock.config import load_config
    from taktstock.evaluation.evaluate import evaluate
    from taktstock.training.run import train

__all__ = ["__version__", "evaluate", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from taktstock.config import load_config

        return load_config
    if name == "train":
        from taktstock.training.run import train

        return train
    if name == "evaluate":
        from taktstock.evaluation.evaluate import evaluate

        return evaluate
    raise AttributeError(name)
