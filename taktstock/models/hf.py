"""`hf:` models: Hugging Face transformers by task (image classification, sequence classification, causal LM).

`hf:<directory>` loads a `save_pretrained` directory, `hf:<id>` an id already in the local Hugging Face
cache (never downloaded); `model.hf_config` builds a randomly initialised model from a config
(`hf:<model_type>` names the type, e.g. `hf:bert` or `hf:vit`). The classification head is sized to
`num_outputs` (a saved head of another size is replaced). Image models take the `(inputs, target)`
tuple batch: their forward is `pixel_values -> logits`. Text models keep Hugging Face's call
convention (`model(**batch_without_labels)` with `.logits`), the dict-batch step of the dataset seam.

Causal language models are sized to the run's tokenizer (the sample spec's `vocab_size`): from
`hf_config` the vocabulary is the tokenizer's; a saved model keeps its embeddings and grows them
(`resize_token_embeddings`) only when its own tokenizer, given as `data.tokenizer: DIR`, has added
tokens. A saved model next to a tokenizer trained by taktstock must match it (`check_pretrained_vocab`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from taktstock.errors import ConfigError
from taktstock.utils.imports import optional_import


def _auto_class(task: str, image: bool) -> Any:
    transformers = optional_import("transformers", "hf")
    if task == "language_modeling":
        return transformers.AutoModelForCausalLM
    if task != "classification":
        raise ConfigError(f"model.name: hf: models support classification and language_modeling, not {task}")
    return transformers.AutoModelForImageClassification if image else transformers.AutoModelForSequenceClassification


# Set while a run's own trained weights are loaded right after the build (predict, evaluate, export, ...).
_WEIGHTS_FOLLOW = contextvars.ContextVar("hf_weights_follow", default=False)


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Build `hf:<dir>` models quietly: the caller loads the run's trained weights next, so transformers'
    load report (a head "newly initialized ... consider training") would be false."""
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


def _from_pretrained(auto: Any, arch: str, kwargs: dict[str, Any], num_classes: int | None) -> nn.Module:
    """`from_pretrained` with transformers' load report replaced by what it means for this run
    (training), or by nothing (the run's own weights follow)."""
    transformers = optional_import("transformers", "hf")
    quiet = _WEIGHTS_FOLLOW.get()
    # The load report, and a tensor-parallel plan check that lists every layer of a single-device model.
    names = ["transformers"] if quiet else ["transformers.modeling_utils", "transformers.distributed.tensor_parallel"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    bars = transformers.utils.logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    if quiet:
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" of weights about to be replaced
    try:
        model, info = auto.from_pretrained(arch, local_files_only=True, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if quiet and bars:
            transformers.utils.logging.enable_progress_bar()
    if not quiet and os.environ.get("RANK", "0") == "0":  # once per run, not once per process of a multi-process run
        for line in _load_notes(arch, info, num_classes):
            print(f"note: {line}", file=sys.stderr)
    return model


def _load_notes(arch: str, info: dict[str, Any], num_classes: int | None) -> list[str]:
    """transformers' loading info ({missing,unexpected,mismatched}_keys) in a few words."""
    new = sorted(set(info.get("missing_keys") or ()) | {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()})
    unused = sorted(info.get("unexpected_keys") or ())
    notes = []
    if new:
        what = f"a new classification head of {num_classes} classes" if num_classes else "new weights"
        notes.append(f"hf:{arch}: {what} is initialised ({_few(new)}); training fits it, the rest starts from the saved weights")
    if unused:
        notes.append(f"hf:{arch}: saved weights this task does not use are left out ({_few(unused)})")
    return notes


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _pixels_to_logits(self: nn.Module, x: Tensor) -> Tensor:
    # The class's own forward, called by keyword: tuple batches pass the images positionally.
    return type(self).forward(self, pixel_values=x).logits


def build_hf(
    arch: str,
    params: dict[str, Any],
    input_shape: tuple[int, ...],
    num_outputs: int,
    hf_config: dict | None,
    task: str = "classification",
    vocab_size: int | None = None,
) -> nn.Module:
    """A transformers model for `task` (the prepared dataset's), its head sized to `num_outputs`."""
    image = len(input_shape) in (2, 3)
    auto = _auto_class(task, image)
    head = {"num_labels": num_outputs} if task == "classification" else {}
    try:
        if hf_config is not None:
            transformers = optional_import("transformers", "hf")
            fields = dict(hf_config)
            model_type = fields.pop("model_type", arch)
            if image:  # the data decides the input geometry
                fields.setdefault("num_channels", 1 if len(input_shape) == 2 else int(input_shape[0]))
                fields.setdefault("image_size", int(input_shape[-1]))
            elif vocab_size is not None:  # token ids: the data's vocabulary sizes the embedding
                if fields.get("vocab_size", vocab_size) < vocab_size:
                    raise ConfigError(
                        f"model.hf_config.vocab_size: {fields['vocab_size']} is smaller than the tokenizer's {vocab_size} "
                        "token ids; leave it out (taktstock sizes it to the tokenizer)"
                    )
                fields.setdefault("vocab_size", vocab_size)
                if task == "language_modeling":
                    fields |= _foreign_token_ids(transformers, model_type, fields)
            config = transformers.AutoConfig.for_model(model_type, **fields, **head, **params)
            model = auto.from_config(config)
        else:
            model = _from_pretrained(auto, arch, head | params, num_outputs if head else None)
            if task == "language_modeling" and vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(vocab_size)  # the model's own tokenizer with added tokens (e.g. a pad token)
    except OSError:
        from huggingface_hub import constants

        where = "a save_pretrained directory" if Path(arch).exists() else f"in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
        raise ConfigError(
            f"model.name: hf:{arch} is not {where}; taktstock never downloads: save_pretrained it to a directory "
            "and name that, or give model.hf_config"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"model: cannot build hf:{arch} ({type(exc).__name__}: {exc})") from None
    if image:
        model.forward = types.MethodType(_pixels_to_logits, model)  # type: ignore[method-assign]
    if task == "language_modeling":
        # No key/value cache: training and evaluation run whole windows, and taktstock's sampler re-reads
        # the cropped context at each token; a cache would only copy every layer's keys and values per step.
        model.config.use_cache = False
        if input_shape:
            _check_positions(arch, model, int(input_shape[0]), hf_config is not None)
    return model


def _foreign_token_ids(transformers: Any, model_type: str, fields: dict[str, Any]) -> dict[str, None]:
    """The model type's default special ids that name no token of the run's vocabulary, set to None.

    GPT-2's 50256 is no token of a tokenizer trained by taktstock; left in, transformers warns at every build
    (taktstock's own sampler stops at the run's end-of-document id)."""
    try:
        defaults = transformers.AutoConfig.for_model(model_type)
    except ValueError:
        return {}  # an unknown model type: the real build reports it
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {
        k: None
        for k in keys
        if k not in fields and isinstance(getattr(defaults, k, None), int) and getattr(defaults, k) >= fields["vocab_size"]
    }


def _check_positions(arch: str, model: nn.Module, block_size: int, from_config: bool) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)  # GPT-2 maps n_positions onto it
    if isinstance(positions, int) and positions < block_size:
        where = "model.hf_config.n_positions (max_position_embeddings)" if from_config else f"hf:{arch}"
        raise ConfigError(f"data.block_size: {block_size} tokens per window, but {where} has only {positions} positions")


def check_pretrained_vocab(arch: str, vocab_size: int) -> None:
    """A saved causal LM trained with another tokenizer cannot read the token ids of the one taktstock trained.

    Called for `hf:<dir or id>` with `data.tokenizer: {train: ...}`: the embedding rows must match the trained
    vocabulary (e.g. a model this project trained before with the same tokenizer settings)."""
    transformers = optional_import("transformers", "hf")
    try:
        config = transformers.AutoConfig.from_pretrained(arch, local_files_only=True)
    except OSError:
        return  # build_hf reports the missing model
    have = getattr(config, "vocab_size", None)
    if isinstance(have, int) and have != vocab_size:
        raise ConfigError(
            f"data.tokenizer: hf:{arch} has {have} token embeddings but the tokenizer trained for this run has {vocab_size} "
            f"tokens; give the model's own tokenizer (data.tokenizer: {arch}) or build the model from model.hf_config"
        )
