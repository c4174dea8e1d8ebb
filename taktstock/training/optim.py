"""Optimizers (any torch.optim class by name) and learning-rate schedules."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taktstock.config.schema import Config, OptimConfig
from taktstock.errors import ConfigError
from taktstock.registry import OPTIMIZERS
from taktstock.training.param_groups import build_param_groups


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer accepts, read from its signature (config validation asks this, not torch)."""

    cls: type[torch.optim.Optimizer]
    accepted: frozenset[str]
    needs_closure: bool  # step(closure) re-evaluates the loss (LBFGS): the training loop steps once per batch
    sparse_only: bool  # every gradient must be sparse (SparseAdam: nn.Embedding(sparse=True) parameters only)

    def kwargs(self, c: OptimConfig) -> dict[str, Any]:
        """Constructor arguments: schema defaults (lr, weight_decay) only where the optimizer takes them
        (LBFGS has no weight_decay; SparseAdam neither), plus the section's extra keys."""
        out: dict[str, Any] = {"lr": c.lr} if "lr" in self.accepted else {}
        if "weight_decay" in self.accepted:
            out["weight_decay"] = c.weight_decay
        return out | c.kwargs()


for _cls in vars(torch.optim).values():
    if inspect.isclass(_cls) and issubclass(_cls, torch.optim.Optimizer) and _cls is not torch.optim.Optimizer:
        _params = frozenset(inspect.signature(_cls.__init__).parameters) - {"self", "params"}
        _closure = inspect.signature(_cls.step).parameters.get("closure")
        _needs_closure = _closure is not None and _closure.default is inspect.Parameter.empty
        OPTIMIZERS.register(_cls.__name__.lower(), OptimizerSpec(_cls, _params, _needs_closure, _cls is torch.optim.SparseAdam))


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """torch.optim class by case-insensitive name."""
    return OPTIMIZERS.get(name.lower()).obj.cls


def build_optimizer(c: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of the `optim` section over `model`'s parameters."""
    spec: OptimizerSpec = OPTIMIZERS.get(c.name.lower()).obj
    cls, kwargs = spec.cls, spec.kwargs(c)
    if spec.sparse_only:
        sparse = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse for p in m.parameters()}
        if any(id(p) not in sparse for p in model.parameters()):
            raise ConfigError(
                f"optim.name: {cls.__name__} needs sparse gradients on every parameter (nn.Embedding(sparse=True)); "
                f"the model ({model.__class__.__name__}) has dense ones (use adam or adamw)"
            )
    fused = c.fused  # true on an optimizer without a fused kernel is refused when the config is loaded
    # The fused kernel updates all parameters in one pass: on a small model's CPU step that is ~20 % of the
    # step time saved over the per-parameter loop torch uses by default on CPU.
    auto = fused is None and "fused" in spec.accepted and not any(kwargs.get(k) for k in ("foreach", "capturable", "differentiable"))
    if fused or auto:
        kwargs["fused"] = True

    groups = _param_groups(c, model, spec)

    def build(kw: dict[str, object]) -> torch.optim.Optimizer:
        return cls(groups, **kw)

    try:
        try:
            return build(kwargs)
        except RuntimeError:
            if not auto:
                raise
            # e.g. a parameter type or device the fused kernel does not support: the default implementation
            del kwargs["fused"]
            return build(kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # torch rejects out-of-range values (momentum=-1, betas=[2, 0])
        raise ConfigError(f"optim: {cls.__name__} rejects the given arguments ({exc})") from None


def _param_groups(c: OptimConfig, model: nn.Module, spec: OptimizerSpec) -> Any:
    """optim.param_groups/no_decay/layer_decay: each group carries its own lr and weight decay. Optimizers
    without weight decay (LBFGS, SparseAdam) get the plain parameters unless groups are asked for."""
    if "weight_decay" not in spec.accepted:
        if not (c.param_groups or c.layer_decay):
            return list(model.parameters())
        return [{k: v for k, v in g.items() if k != "weight_decay"} for g in build_param_groups(c, model)]
    return build_param_groups(c, model)


def build_scheduler(
    config: Config, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """A scheduler advanced once per optimizer step (plateau: once per validation)."""
    s = config.scheduler
    sched = torch.optim.lr_scheduler
    total_steps = max(total_steps, 1)
    if s.name == "none":
        return None
    if s.name == "step":
        return sched.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=s.min_lr)
    if s.name == "onecycle":
        # Every parameter group peaks at its own rate, scaled like its lr relative to optim.lr.
        peak = s.max_lr or config.optim.lr
        max_lrs = [peak * g["lr"] / config.optim.lr for g in optimizer.param_groups]
        return sched.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps)
    if s.name == "warmup_cosine":
        warmup, base, floor = s.warmup_steps, config.optim.lr, s.min_lr

        # A pure function of the step: nothing to drift on resume.
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return (floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))) / base

        return sched.LambdaLR(optimizer, factor)
    if s.name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode=config.metrics.mode, factor=s.gamma, patience=s.patience, min_lr=s.min_lr)
    raise ConfigError(f"scheduler.name: unknown scheduler '{s.name}'")
