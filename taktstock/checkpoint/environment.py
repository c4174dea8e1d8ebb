"""What a bit-exact resume relies on besides the checkpoint: the software and hardware that did the arithmetic.

Each checkpoint records it (`environment`); a resume compares it with the current process and says in one
line when the continuation may differ from an uninterrupted run in the last bits, and why. It resumes anyway.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

import torch

# Packages whose versions change the numbers a run computes, when they are in use.
NUMERIC_PACKAGES = ("numpy", "torchvision", "transformers", "timm", "torchmetrics")


def _version(name: str) -> str | None:
    if name not in sys.modules:
        return None  # not used by this run
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules[name], "__version__", None)


def numerics_environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """Versions, device, world size and the determinism switches in effect in this process."""
    cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "torch": str(torch.__version__),  # a TorchVersion otherwise, which weights_only loading refuses
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(device) if cuda else device.type,
        # CPU kernels are chosen by instruction set (AVX2, AVX-512, ...): a different one can change the last bits.
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "machine": platform.machine(),
        "world_size": world_size,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    env["packages"] = {name: v for name in NUMERIC_PACKAGES if (v := _version(name)) is not None}
    return env


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'what: then -> now' for each recorded item that differs now (packages only where both recorded them)."""
    out = [f"{k} {recorded[k]} -> {current.get(k)}" for k in recorded if k != "packages" and recorded[k] != current.get(k)]
    old, new = recorded.get("packages") or {}, current.get("packages") or {}
    out += [f"{name} {old[name]} -> {new[name]}" for name in old if name in new and old[name] != new[name]]
    return out


def resume_note(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """One line when this process differs from the one that wrote the checkpoint (None when it is the same)."""
    if not recorded:
        return None  # a checkpoint of an older taktstock: nothing to compare
    changed = differences(recorded, current)
    if not changed:
        return None
    return (
        "note: resuming in a different environment than the checkpoint was written in ("
        + "; ".join(changed)
        + "): the continuation is exact in logic but may differ in the last bits from an uninterrupted run"
    )
