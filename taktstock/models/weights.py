"""Initial weights for a model: `model.weights` (a file or a run directory) or `model.pretrained` (local cache).

Files are read with `weights_only` (safetensors, or torch.load(weights_only=True)); nothing is downloaded.
Loading fits the file to the model: `_orig_mod.`/`module.` prefixes of wrapped models are dropped, a
3-channel first conv is folded into the model's channel count, and with `weights_strict: false` (or a
pretrained head of another size) what does not match by name and shape stays as initialised and is listed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from taktstock.errors import ConfigError

if TYPE_CHECKING:  # models/ sits below config/: the schema only as types
    from taktstock.config.schema import ModelConfig

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # first conv folded to another channel count
    mismatched: list[str] = field(default_factory=list)  # same name, another shape (e.g. a head for other classes)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model

    def problems(self) -> list[str]:
        return [*self.mismatched, *self.missing, *self.unexpected]


def resolve_path(value: str) -> Path:
    """A weights file, or a run directory's best.safetensors."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "best.safetensors").is_file():
            raise ConfigError(f"model.weights: {path} is a directory without best.safetensors (not a finished taktstock run)")
        return path / "best.safetensors"
    if not path.is_file():
        raise ConfigError(f"model.weights: file not found: {path}")
    return path


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as the plain module names them, whatever compile/DDP wrapping wrote the file."""
    out = {}
    for key, value in state.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def read_state_dict(path: Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a .pt/.pth/.bin state dict (a taktstock checkpoint's 'model' too)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, truncated files, another format
        raise ConfigError(f"{key}: cannot read {path} as a weights_only state dict ({type(exc).__name__}: {exc})") from None
    for nested in ("model", "state_dict", "model_state_dict"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {path} does not hold a state dict of tensors")
    return strip_wrapper_prefixes(state)


def _fold_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A conv kernel for `channels` inputs from one for 3: summed for 1, else repeated and rescaled (as timm does)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The entries of `state` that fit `model` (the first conv adapted), and what did not fit."""
    from taktstock.models.zoo import first_conv_name

    target = model.state_dict()
    conv = first_conv_name(model)
    first_conv_weight = f"{conv}.weight" if conv is not None else None
    report, fitted = LoadReport(), {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key].shape
        if value.shape == want:
            fitted[key] = value
            report.loaded.append(key)
        elif key == first_conv_weight and value.ndim == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            fitted[key] = _fold_channels(value, want[1]).to(value.dtype)
            report.adapted.append(key)
        else:
            report.mismatched.append(key)
    report.missing = [k for k in target if k not in state]
    return fitted, report


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def load_initial_weights(model: nn.Module, cfg: ModelConfig, announce: bool = True) -> LoadReport | None:
    """Load model.weights or model.pretrained into `model` (before it is moved, wrapped or compiled)."""
    if cfg.weights:
        path, key = resolve_path(cfg.weights), "model.weights"
    elif cfg.pretrained:
        from taktstock.models.zoo import pretrained_file

        path, key = pretrained_file(cfg.name), "model.pretrained"
    else:
        return None
    fitted, report = fit_state_dict(model, read_state_dict(path, key))
    # A pretrained head for another number of classes is expected: it is replaced (stays freshly initialised).
    tolerated = report.mismatched if key == "model.pretrained" else []
    strict_problems = [k for k in report.problems() if k not in tolerated]
    if cfg.weights_strict and strict_problems:
        parts = [
            f"{name} {_few(keys)}"
            for name, keys in (("shape differs:", report.mismatched), ("missing:", report.missing), ("unexpected:", report.unexpected))
            if keys
        ]
        raise ConfigError(
            f"{key}: {path} does not fit {cfg.name} ({'; '.join(parts)}); "
            "set model.weights_strict: false to load the matching weights and keep the rest as initialised"
        )
    if not fitted:
        raise ConfigError(f"{key}: no weight in {path} matches {cfg.name} by name and shape")
    model.load_state_dict(fitted, strict=False)
    if announce:
        notes = [f"loaded {len(report.loaded) + len(report.adapted)} of {len(model.state_dict())} tensors from {path}"]
        if report.adapted:
            notes.append(f"first conv adapted to the input channels ({_few(report.adapted)})")
        if report.mismatched:
            notes.append(f"replaced (other shape): {_few(report.mismatched)}")
        if report.missing:
            notes.append(f"not in the file: {_few(report.missing)}")
        if report.unexpected:
            notes.append(f"ignored: {_few(report.unexpected)}")
        print(f"note: {key}: " + "; ".join(notes), file=sys.stderr)
    return report
