"""Weights & Biases tracking: config and metrics; offline unless an API key is configured.

Runs are written under RUN_DIR/wandb. Offline runs never touch the network; upload them later
with `wandb sync RUN_DIR/wandb/offline-run-*`. Resume continues the same W&B run id.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from taktstock.tracking.provenance import provenance
from taktstock.utils.imports import optional_import

if TYPE_CHECKING:
    from taktstock.config.schema import Config
    from taktstock.run_dir import RunDir


def has_api_key() -> bool:
    """True when W&B credentials are configured (WANDB_API_KEY or a netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """auto -> WANDB_MODE if set, else online with an API key and offline without one."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_api_key() else "offline"


def _new_run_id() -> str:
    """An 8-character W&B-style run id (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbTracker:
    name = "wandb"

    def __init__(self, config: Config, run: RunDir) -> None:
        self.cfg = config.logging.wandb
        self.config = config
        self.run_dir = run
        self.mode = resolve_mode(self.cfg.mode)
        self.wb_run: Any = None
        self.run_id: str | None = None

    def start(self, config: dict[str, Any], resume_state: dict[str, Any] | None, step: int) -> None:
        wandb = optional_import("wandb", "wandb")
        previous = resume_state or (self.run_dir.read_info().get("wandb") if step > 0 else None) or {}
        self.run_id = previous.get("run_id") or _new_run_id()
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, init_timeout=30, x_disable_stats=True)
        self.wb_run = wandb.init(
            project=self.cfg.project or self.config.experiment.name,
            entity=self.cfg.entity,
            name=self.run_dir.root.name,
            id=self.run_id,
            resume="allow",
            dir=str(self.run_dir.root),
            config=config,
            tags=[f"{k}={v}"[:64] for k, v in provenance().items()],
            mode=self.mode,
            settings=settings,
        )
        self.run_dir.update_info(wandb={"run_id": self.run_id, "mode": self.mode, "project": self.wb_run.project})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.wb_run.log(metrics, step=step)

    def log_artifact(self, path: Path) -> None:
        self.wb_run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def log_run_outputs(self, run: RunDir, final: dict[str, float]) -> None:
        self.wb_run.summary.update(final)
        curves = run.plots / "learning_curves.png"
        if curves.is_file():
            import wandb

            self.wb_run.log({"learning_curves": wandb.Image(str(curves))}, commit=False)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def finish(self, status: str) -> None:
        if self.wb_run is not None:
            self.wb_run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.wb_run = None


def offline_history(run_file: Path) -> Iterator[dict[str, Any]]:
    """History rows (metric dicts, with _step) of a W&B transaction log `run-<id>.wandb`.

    The file is a LevelDB-style log of protobuf `Record`s: a 7-byte header, then 32 KiB blocks of
    chunks with a 7-byte header each (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"not a W&B transaction log: {run_file}")
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = payload
        else:
            pending += payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                yield {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
