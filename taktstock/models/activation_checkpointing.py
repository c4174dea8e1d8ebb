"""model.activation_checkpointing: recompute the activations of matching submodules in the backward pass.

Each matching submodule's forward runs under `torch.utils.checkpoint.checkpoint(use_reentrant=False)` while
gradients are enabled: only its inputs are kept, its intermediate tensors are recomputed when the backward
reaches it. Parameter names and state dicts are unchanged (no wrapper module), so checkpoints, `model.freeze`
globs and parameter groups read the same with and without it. Evaluation (no grad) runs the plain forward.
"""

from __future__ import annotations

import fnmatch
import types
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from taktstock.errors import ConfigError


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    # Non-reentrant: works with keyword arguments, inputs that need no grad and torch.compile; RNG state
    # (dropout) is restored for the recomputation, so the gradients equal the plain run's.
    return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module, patterns: list[str]) -> list[str]:
    """Checkpoint the submodules whose names match any glob; returns their names.

    A module inside one already checkpointed is not wrapped again (its activations are recomputed anyway).
    A pattern that matches no submodule is a config error naming it."""
    if not patterns:
        return []
    names = [name for name, _ in model.named_modules() if name]
    chosen: list[str] = []
    for i, pattern in enumerate(patterns):
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ConfigError(
                f"model.activation_checkpointing[{i}]: '{pattern}' matches no submodule (names look like {', '.join(names[:4])}, ...)"
            )
        chosen.extend(h for h in hits if h not in chosen)
    modules = dict(model.named_modules())
    outermost = [n for n in chosen if not any(n.startswith(other + ".") for other in chosen)]
    for name in outermost:
        module = modules[name]
        # An instance attribute bound with MethodType: deepcopy (the EMA copy) rebinds it to the copy.
        module.forward = types.MethodType(_checkpointed_forward, module)  # type: ignore[method-assign]
    return outermost
