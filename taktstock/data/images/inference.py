"""Image files -> model inputs for predict/export, from the run's preprocessing.json alone.

The same decode, resize and eval pipeline as the evaluation samples of training, so a prediction on a
file equals the model's output on that file in `evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taktstock.data.images.dataset import ImageSettings, load_uint8
from taktstock.data.images.decode import DecodeError
from taktstock.data.images.transforms import build_pipeline, sizes_itself
from taktstock.errors import UserError


class ImageInputs:
    """Callable: a list of image paths -> a float (N, C, H, W) batch, preprocessed as at evaluation."""

    def __init__(self, preprocessing: dict[str, Any]) -> None:
        p = preprocessing
        self.items = list(p.get("eval_transforms") or [])
        h, w = p["image_size"]
        self.settings = ImageSettings(cache_dir=Path(), root=Path(), seed=0, channels=int(p["channels"]), image_size=(h, w))
        self.pipeline = build_pipeline(self.items, "data.transforms.eval", p.get("mean"), p.get("std"))

    def __call__(self, paths: Sequence[str | Path]) -> torch.Tensor:
        images = []
        for path in paths:
            if not Path(path).is_file():
                raise UserError(f"input file not found: {path}")
            try:
                images.append(load_uint8(self.settings, path, resize=not sizes_itself(self.items)))
            except DecodeError as exc:
                raise UserError(str(exc)) from None
        return torch.stack([self.pipeline(image) for image in images])
