"""Build the trackers a config enables (heavy backends imported only when enabled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taktstock.tracking.base import Tracker

if TYPE_CHECKING:
    from taktstock.config.schema import Config
    from taktstock.run_dir import RunDir
    from taktstock.training.distributed import DistEnv


def build_trackers(config: Config, run: RunDir, dist: DistEnv) -> list[Tracker]:
    trackers: list[Tracker] = []
    if config.logging.tensorboard:
        from taktstock.tracking.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(run.tensorboard))
    return trackers
