"""Optimizer parameter groups: `optim.param_groups` (first match wins), `optim.no_decay` and `optim.layer_decay`.

Every parameter, frozen ones included, is in exactly one group, so the optimizer's structure (and a
checkpoint's optimizer state) is the same before and after `model.unfreeze_at_epoch`. Each group
carries a `name` key (torch keeps unknown keys), used for the per-group learning rates in the logs.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import torch
from torch import nn

from taktstock.config.schema import OptimConfig
from taktstock.errors import ConfigError

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.RMSNorm)


def default_no_decay(model: nn.Module) -> set[str]:
    """Biases and normalisation weights (decaying them only shrinks scales and offsets; BERT/ViT/timm recipes skip them)."""
    names = {n for n, _ in model.named_parameters() if n.endswith("bias")}
    for prefix, module in model.named_modules():
        if isinstance(module, _NORMS) or type(module).__name__.endswith(("LayerNorm", "RMSNorm", "BatchNorm2d")):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def _trunk(model: nn.Module) -> list[nn.Module]:
    """The longest list of repeated parameterised blocks (ViT/BERT encoder layers): the layers to order."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            blocks = [c for c in module.children() if any(True for _ in c.parameters())]
            # Repeated blocks share a class; a model's top-level Sequential (stem, blocks, head) does not.
            if len(blocks) > len(best) and len({type(b) for b in blocks}) == 1:
                best = blocks
    return best


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """(parameter name -> layer id, number of layers): 0 the embedding/stem, the last the head.

    timm models order their own layers (`group_matcher`); other models: parameters before the
    longest block list are layer 0, block k is layer k + 1, everything after it is the head.
    """
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        mapping = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        n = max(mapping.values()) + 1
        return {name: mapping.get(name, n - 1) for name, _ in model.named_parameters()}, n
    block_of = {id(p): k + 1 for k, block in enumerate(_trunk(model)) for p in block.parameters()}
    head = len(set(block_of.values())) + 1
    ids, seen_block = {}, False
    for name, p in model.named_parameters():
        if id(p) in block_of:
            ids[name], seen_block = block_of[id(p)], True
        else:
            ids[name] = head if seen_block else 0
    return ids, head + 1


def build_param_groups(cfg: OptimConfig, model: nn.Module) -> list[dict[str, Any]]:
    """Torch parameter-group dicts with their own lr and weight_decay (and a `name`)."""
    params = list(model.named_parameters())
    names = [n for n, _ in params]
    explicit: dict[str, int] = {}
    for i, group in enumerate(cfg.param_groups):
        patterns = [group.params] if isinstance(group.params, str) else group.params
        hits = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not hits:
            raise ConfigError(
                f"optim.param_groups[{i}].params: {patterns} matches no parameter (names look like {', '.join(names[:3])}, ...)"
            )
        for n in hits:
            explicit.setdefault(n, i)  # first match wins
    if cfg.no_decay is None:
        no_decay = default_no_decay(model)
    else:
        no_decay = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in cfg.no_decay)}
    layers, n_layers = layer_ids(model) if cfg.layer_decay is not None else ({}, 1)
    groups: dict[tuple[int, bool, int], dict[str, Any]] = {}
    for name, param in params:
        index = explicit.get(name, -1)
        spec = cfg.param_groups[index] if index >= 0 else None
        lr = spec.lr if spec is not None and spec.lr is not None else cfg.lr
        wd = spec.weight_decay if spec is not None and spec.weight_decay is not None else cfg.weight_decay
        decay = name not in no_decay and wd > 0
        layer = layers.get(name, n_layers - 1)
        key = (index, decay, layer)
        if key not in groups:
            label = "default" if index < 0 else _label(cfg.param_groups[index].name, cfg.param_groups[index].params, index)
            if cfg.layer_decay is not None:
                label += f"/layer{layer}"
                lr = lr * cfg.layer_decay ** (n_layers - 1 - layer)
            if wd > 0 and not decay:
                label += "/no_decay"
            groups[key] = {"params": [], "lr": lr, "weight_decay": wd if decay else 0.0, "name": label}
        groups[key]["params"].append(param)
    # Explicit groups first, then the default group, layers bottom-up: a stable, readable order.
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] < 0, k[0], k[2], not k[1]))]


def _label(name: str | None, patterns: str | list[str], index: int) -> str:
    """A name trackers accept as part of a metric key (MLflow refuses '*' and ','): 'head.*' -> 'head'."""
    if name:
        return name
    joined = "_".join([patterns] if isinstance(patterns, str) else patterns)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", joined.replace(".*", "")).strip("._-") or f"group{index}"


def lr_record(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr` (the first group, as before) and, with several groups, `lr/<group name>` for each."""
    groups = optimizer.param_groups
    record = {"lr": groups[0]["lr"]}
    if len(groups) > 1:
        record.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)})
    return record


def group_counts(optimizer: torch.optim.Optimizer) -> list[tuple[str, float, float, int, int]]:
    """(name, lr, weight_decay, trainable, frozen parameter counts) per group, for the dry run."""
    rows = []
    for i, g in enumerate(optimizer.param_groups):
        trainable = sum(p.numel() for p in g["params"] if p.requires_grad)
        frozen = sum(p.numel() for p in g["params"] if not p.requires_grad)
        rows.append((str(g.get("name", i)), g["lr"], g["weight_decay"], trainable, frozen))
    return rows
