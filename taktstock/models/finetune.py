"""Freezing for fine-tuning: `model.freeze` globs, frozen normalisation layers kept in eval mode, and
`model.unfreeze_at_epoch` (gradual unfreezing as a pure function of the epoch, so resume needs no state).

Frozen parameters stay in the optimizer (their gradient is None, so it skips them): unfreezing later
changes no optimizer structure, and a checkpoint written before and one written after load alike.
"""

from __future__ import annotations

import fnmatch
import types
from typing import TYPE_CHECKING, Any

from torch import nn

from taktstock.errors import ConfigError

if TYPE_CHECKING:  # models/ sits below config/: the schema only as types
    from taktstock.config.schema import Config, ModelConfig

# Layers whose running statistics move in train mode: when all their parameters are frozen they stay in eval.
_STAT_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def check_model_config(config: Config) -> None:
    """Combinations of the fine-tuning keys that cannot work, refused when the config is loaded."""
    from taktstock.models.zoo import split_name

    m = config.model
    source = (split_name(m.name) or ("", ""))[0]
    if m.weights and m.pretrained:
        raise ConfigError("model.pretrained: set either model.pretrained or model.weights, not both")
    if m.pretrained and source not in ("torchvision", "timm"):
        raise ConfigError(f"model.pretrained: only torchvision:/timm: models have pretrained weights; for {m.name} use model.weights: PATH")
    if m.hf_config is not None and source != "hf":
        raise ConfigError(f"model.hf_config: only for hf: models, not {m.name}")
    if m.unfreeze_at_epoch is not None and not m.freeze:
        raise ConfigError("model.unfreeze_at_epoch: nothing to unfreeze (model.freeze is empty)")
    if config.train.ema is not None and config.distributed.strategy == "fsdp":
        raise ConfigError("train.ema: not supported with distributed.strategy fsdp (the EMA would need the full weights on every rank)")


def matching(names: list[str], patterns: list[str], key: str) -> set[str]:
    """Names matched by any glob; a pattern that matches nothing is a config error (a typo freezes nothing)."""
    found: set[str] = set()
    for i, pattern in enumerate(patterns):
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ConfigError(f"{key}[{i}]: '{pattern}' matches no parameter (names look like {', '.join(names[:3])}, ...)")
        found.update(hits)
    return found


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    # nn.Module.train recurses through children calling their .train: this instance override keeps the layer in eval.
    return nn.Module.train(self, False)


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """requires_grad=False for matching parameters; fully frozen BatchNorm/InstanceNorm layers stay in eval mode."""
    if not patterns:
        return []
    names = [n for n, _ in model.named_parameters()]
    frozen = matching(names, patterns, "model.freeze")
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        # Parameter-free norms (affine=False) follow whatever layer they belong to.
        if isinstance(module, _STAT_NORMS) and own and not any(p.requires_grad for p in own):
            module.train = types.MethodType(_eval_only_train, module)  # type: ignore[method-assign]
            module.eval()
    return sorted(frozen)


def unfreeze(model: nn.Module, patterns: list[str]) -> None:
    """Undo `freeze` for the same patterns (the layers follow model.train()/eval() again)."""
    frozen = matching([n for n, _ in model.named_parameters()], patterns, "model.freeze")
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(True)
    for module in model.modules():
        if "train" in vars(module):
            del module.train
            module.train(model.training)


class GradualUnfreeze:
    """Trainer callback: the frozen parameters train from epoch `epoch` on (before that epoch's first step)."""

    def __init__(self, model: nn.Module, patterns: list[str], epoch: int) -> None:
        self.model, self.patterns, self.epoch, self.done = model, patterns, epoch, False

    def _apply(self, epoch: int) -> None:
        if not self.done and epoch >= self.epoch:
            unfreeze(self.model, self.patterns)
            self.done = True

    def on_train_start(self, trainer: Any) -> None:  # a resumed run: the epoch it resumes in decides
        if trainer.p.dist.enabled:
            # DDP/FSDP fix the set of trained parameters when they wrap the model: unfrozen ones would never be synchronised.
            raise ConfigError(
                "model.unfreeze_at_epoch: not supported in multi-process runs (freeze without unfreezing, or train on one process)"
            )
        self._apply(trainer.state.epoch)

    def on_epoch_end(self, trainer: Any) -> None:  # called before the epoch counter advances
        self._apply(trainer.state.epoch + 1)


def finetune_callbacks(m: ModelConfig, model: nn.Module) -> list[Any]:
    """model.unfreeze_at_epoch: the gradual-unfreezing callback (stateless: the epoch decides)."""
    return [GradualUnfreeze(model, m.freeze, m.unfreeze_at_epoch)] if m.unfreeze_at_epoch is not None else []
