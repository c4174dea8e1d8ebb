"""Checks of a config against the prepared data, run before anything is built or written.

They turn mistakes that would otherwise surface as a shape or dtype error deep inside PyTorch
(and after a run directory was created) into a `ConfigError` naming the key to change.
"""

from __future__ import annotations

from taktstock.config.schema import Config
from taktstock.data.dataset import PreparedDataset, input_shape
from taktstock.errors import ConfigError


def check_config_fits_data(config: Config, data: PreparedDataset) -> None:
    """Raise `ConfigError` when the loss, class weights or monitored metric cannot work with `data`."""
    n_train, n_val = len(data.split("train")), len(data.split("val"))
    if n_train == 0:
        raise ConfigError("data: the training split is empty (too few samples for data.val_fraction/test_fraction)")
    monitor = config.metrics.monitor
    if monitor.startswith("val/") and n_val == 0:
        raise ConfigError(
            f"metrics.monitor: '{monitor}' needs a validation split, but it is empty "
            f"(data.val_fraction={config.data.val_fraction}); set data.val_fraction > 0 or monitor train/loss"
        )
    aug, shape = config.data.augment, input_shape(data.spec())
    for key, active in (("shift", aug.shift > 0), ("hflip", aug.hflip)):
        if active and len(shape) < 2:
            raise ConfigError(f"data.augment.{key}: needs image inputs, but samples of {config.data.source} have shape {shape}")
    if config.task != "classification":
        return
    n_classes = _n_classes(data)
    if config.loss.name == "bce_with_logits" and n_classes > 2:
        raise ConfigError(f"loss.name: bce_with_logits is for binary targets, but the data has {n_classes} classes (use cross_entropy)")
    weights = config.loss.class_weights
    if config.loss.name == "cross_entropy" and weights is not None and len(weights) != data.num_outputs:
        raise ConfigError(f"loss.class_weights: {len(weights)} weights given, but the data has {data.num_outputs} classes")


def _n_classes(data: PreparedDataset) -> int:
    # In-memory arrays know their labels (a single bce_with_logits output hides the class count).
    arrays = getattr(data, "arrays", None) or {}
    labels = [int(y.max()) + 1 for _, y in arrays.values() if len(y)]
    return max([len(data.class_names), data.num_outputs, *labels])
