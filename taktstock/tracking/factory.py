"""Build the trackers a config enables (heavy backends imported only when enabled)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from taktstock.errors import UserError
from taktstock.tracking.base import Tracker
from taktstock.utils.imports import optional_import

if TYPE_CHECKING:
    from taktstock.config.schema import Config
    from taktstock.run_dir import RunDir
    from taktstock.training.distributed import DistEnv


def build_trackers(config: Config, run: RunDir, dist: DistEnv) -> list[Tracker]:
    """The enabled backends, checked before training starts.

    A missing package is always an error (naming the pip extra). An unreachable tracking server
    is an error too, unless logging.fail_soft, which drops that backend with a warning.
    """
    trackers: list[Tracker] = []
    log = config.logging
    if log.tensorboard:
        from taktstock.tracking.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(run.events_dir))
    if log.mlflow.enabled:
        optional_import("mlflow", "mlflow")
        from taktstock.tracking.mlflow import MlflowTracker

        trackers.append(MlflowTracker(config, run))
    if log.wandb.enabled and log.wandb.mode != "disabled":
        optional_import("wandb", "wandb")
        from taktstock.tracking.wandb import WandbTracker

        trackers.append(WandbTracker(config, run))
    return [t for t in trackers if _preflight_ok(t, log.fail_soft)]


def _preflight_ok(tracker: Tracker, fail_soft: bool) -> bool:
    check = getattr(tracker, "preflight", None)
    if check is None:
        return True
    try:
        check()
    except UserError as exc:
        if not fail_soft:
            raise
        print(f"warning: {exc}; logging.fail_soft is set, training continues without '{tracker.name}'", file=sys.stderr)
        return False
    return True
