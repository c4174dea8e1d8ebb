"""Builders of the trainer's parts that are more than one library call. Each takes its own config section
(the model builder also the train and distributed settings that wrap the model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taktstock.config.schema import Config, TrainConfig
from taktstock.data.dataset import PreparedDataset, Spec, input_shape
from taktstock.models.activation_checkpointing import apply_activation_checkpointing
from taktstock.models.finetune import freeze
from taktstock.models.init import initialize
from taktstock.models.registry import build_model
from taktstock.models.weights import load_initial_weights
from taktstock.training.distributed import DistEnv, wrap_model
from taktstock.training.step import StepFn, default_step
from taktstock.utils.imports import import_object


def prepare_and_build_model(config: Config, dist: DistEnv) -> tuple[torch.device, PreparedDataset, nn.Module, nn.Module]:
    """The start every training set-up shares (a run, the finders): the device, the prepared data checked against
    the config, and (model, forward_model), seeded so that the model's start never depends on the data cache."""
    from taktstock.data.prepare import prepare
    from taktstock.training.checks import check_config_fits_data
    from taktstock.training.device import select_device
    from taktstock.training.rng import seed_everything

    device = select_device(config.train.device, dist.local_rank)
    seed_everything(config.seed, config.train.deterministic)
    data = prepare(config)
    check_config_fits_data(config, data)
    # Again: a cache miss runs (and imports) more than a hit, and some imports draw from Python's RNG
    # (scikit-learn does); training must start from the same RNG state either way.
    seed_everything(config.seed, config.train.deterministic)
    model, forward_model = build_model_for(config, data, device, dist)
    return device, data, model, forward_model


def build_model_for(
    config: Config, data: PreparedDataset, device: torch.device, dist: DistEnv, initial_weights: bool = True
) -> tuple[nn.Module, nn.Module]:
    """(plain model, model to call): the second may be compiled and/or wrapped for multi-process training.

    The model is built from the sample spec; `initial_weights=False` skips model.weights/model.pretrained."""
    spec, m = data.spec(), config.model
    vocab = next((f.vocab_size for f in spec.values() if f.vocab_size is not None), None)
    cards = next((f.cardinalities for f in spec.values() if f.cardinalities is not None), None)
    if data.task == "language_modeling" and m.name.startswith("hf:") and m.hf_config is None and not isinstance(config.data.tokenizer, str):
        from taktstock.models.hf import check_pretrained_vocab

        check_pretrained_vocab(m.name.removeprefix("hf:"), vocab)  # type: ignore[arg-type]
    model = build_model(m.name, m.params(), input_shape(spec), data.num_outputs, vocab, m.hf_config, data.task, cardinalities=cards)
    initialize(model, config.model.init)
    # Fine-tuning: initial weights, then freezing, before the model is moved, wrapped or compiled.
    if initial_weights:
        load_initial_weights(model, config.model, announce=dist.is_main)
    freeze(model, config.model.freeze)
    apply_activation_checkpointing(model, config.model.activation_checkpointing)
    model.to(device)
    if config.train.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    forward_model = wrap_model(model, config, device, dist)
    if config.train.compile:
        forward_model = torch.compile(forward_model, dynamic=compile_dynamic(spec))
    return model, forward_model


def compile_dynamic(spec: Spec) -> bool | None:
    """`dynamic=` for torch.compile: True for padded batches (an `attention_mask` field), else PyTorch's default.

    Dynamically padded text batches change length from batch to batch. Left to PyTorch's automatic dynamic
    shapes, the first batch compiles a static graph and the first batch of another length recompiles it as a
    dynamic one; compiling dynamic from the start saves that second compile (one graph for training, one for
    evaluation, whatever the lengths). Fixed shapes (images, language-model windows) keep static graphs.
    """
    return True if "attention_mask" in spec else None


def step_fn_for(train: TrainConfig) -> StepFn:
    return import_object(train.step_fn, "train.step_fn") if train.step_fn else default_step


def callbacks_for(train: TrainConfig) -> list[Any]:
    return [import_object(path, "train.callbacks")() for path in train.callbacks]
