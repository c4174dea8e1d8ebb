"""Weight initialisation schemes chosen in config (model.init)."""

from __future__ import annotations

from torch import nn

_SCHEMES = {
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "orthogonal": nn.init.orthogonal_,
}


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise Linear and Conv weights with `scheme` and zero their biases; 'default' keeps PyTorch's init."""
    if scheme == "default":
        return
    fn = _SCHEMES[scheme]
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fn(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
