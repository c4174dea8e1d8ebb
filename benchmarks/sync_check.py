"""GPU only: train with torch.cuda.set_sync_debug_mode("error") armed during steady-state steps.

Any host synchronisation inside a step that is not a logging/validation/checkpoint step raises.
`python -m benchmarks.sync_check` (exit 0: no per-step sync; exit 1: the offending stack is printed).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch


class ArmSyncDebug:
    """Armed from the end of one optimizer step to the end of the next, unless the step that just ended
    is followed by logging, an epoch end (validation, checkpoint) or a periodic checkpoint, which sync by design.
    (on_step_end runs at the start of the trainer's per-step bookkeeping, before those.)"""

    def on_step_end(self, trainer: Any) -> None:
        cfg, s = trainer.cfg, trainer.state
        every_ckpt = cfg.checkpoint.every_n_steps
        syncs_next = (
            s.step % cfg.train.log_every_n_steps == 0
            or s.batch_in_epoch >= len(trainer.p.train_batches)
            or (every_ckpt is not None and s.step % every_ckpt == 0)
            or (cfg.train.max_steps is not None and s.step >= cfg.train.max_steps)
        )
        torch.cuda.set_sync_debug_mode("default" if syncs_next else "error")

    def on_train_end(self, trainer: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")


def main() -> int:
    if not torch.cuda.is_available():
        print("sync_check: CUDA not available", file=sys.stderr)
        return 2
    from taktstock.config.loader import validate
    from taktstock.training.run import train

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        # DataLoader path (pinned host memory), host-resident in-memory path, and on-device in-memory path.
        cases = [
            ("never", False, "32", True),
            ("always", False, "bf16", False),  # host-resident: batches gathered into pinned memory
            ("always", False, "bf16", True),  # host-resident + host augmentation
            ("always", True, "bf16", False),  # on the GPU
            ("always", True, "bf16", True),  # on the GPU, augmentation computed on the host
        ]
        for in_memory, on_device, precision, augment in cases:
            raw = {
                "experiment": {"name": "sync-check", "output_dir": str(Path(tmp) / "runs")},
                "data": {
                    "source": "synthetic",
                    "kwargs": {"n_samples": 4096, "n_features": 3072, "n_classes": 10, "shape": [3, 32, 32]},
                    "cache_dir": str(Path(tmp) / "cache"),
                    "in_memory": in_memory,
                    "on_device": on_device,
                    "augment": {"shift": 2, "hflip": True} if augment else {},
                },
                "model": {"name": "resnet", "width": 16},
                "train": {
                    "epochs": 2,
                    "batch_size": 128,
                    "precision": precision,
                    "channels_last": True,
                    "device": "cuda",
                    "log_every_n_steps": 10,
                    "callbacks": ["benchmarks.sync_check:ArmSyncDebug"],
                },
                "logging": {"tensorboard": False, "plots": False, "progress": "off"},
            }
            label = f"in_memory={in_memory} on_device={on_device} precision={precision} augment={augment}"
            try:
                train(validate(raw, {}, "<sync-check>"), run_dir=Path(tmp) / label.replace(" ", "_"))
                print(f"sync_check {label}: OK (no host synchronisation in steady-state steps)")
            except RuntimeError as exc:
                failures += 1
                torch.cuda.set_sync_debug_mode("default")
                import traceback

                traceback.print_exc()
                print(f"sync_check {label}: FAILED: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
