"""`hf:` models: Hugging Face transformers by task (image classification, sequence classification, causal LM).

`hf:<directory>` loads a `save_pretrained` directory, `hf:<id>` an id already in the local Hugging Face
cache (never downloaded); `model.hf_config` builds a randomly initialised model from a config
(`hf:<model_type>` names the type, e.g. `hf:bert` or `hf:vit`). The classification head is sized to
`num_outputs` (a saved head of another size is replaced). Image models take the `(inputs, target)`
tuple batch: their forward is `pixel_values -> logits`. Text models keep Hugging Face's call
convention (`model(**batch_without_labels)` with `.logits`), the dict-batch step of the dataset seam.
"""

from __future__ import annotations

import types
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
                fields.setdefault("vocab_size", vocab_size)
            config = transformers.AutoConfig.for_model(model_type, **fields, **head, **params)
            model = auto.from_config(config)
        else:
            model = auto.from_pretrained(arch, local_files_only=True, ignore_mismatched_sizes=True, **head, **params)
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
    return model
