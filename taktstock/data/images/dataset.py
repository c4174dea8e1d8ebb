"""The per-split image dataset: (float CxHxW tensor, target) samples decoded in DataLoader workers."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taktstock.data.dataset import Key, SplitDataset, split_key
from taktstock.data.images.decode import DecodeError, decode
from taktstock.data.images.index import decode_path
from taktstock.data.images.pixel_cache import FILE as PIXEL_FILE
from taktstock.data.images.pixel_cache import open_pixel_cache
from taktstock.data.images.transforms import apply_seeded, build_pipeline, sample_seed, sizes_itself
from taktstock.errors import UserError


class BadSampleError(UserError):
    """An image that fails to load with data.bad_samples: error.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    `BadSampleError("Caught BadSampleError in DataLoader worker process N. Original Traceback ...")`;
    the constructor keeps only the original message, so the CLI prints one line, not the worker's traceback.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class ImageSettings:
    """Everything a worker needs to turn a file id into a model input (small and picklable)."""

    cache_dir: Path
    root: Path
    seed: int
    channels: int
    image_size: tuple[int, int]
    train_transforms: list[Any] = field(default_factory=list)
    eval_transforms: list[Any] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    bad_samples: str = "error"
    pixel_cache: bool = False
    regression: bool = False


def load_uint8(settings: ImageSettings, path: str | Path, resize: bool) -> torch.Tensor:
    """Decode one file to uint8 (C, H, W), resized to image_size when `resize` (the step the pixel cache stores)."""
    image = decode(path, settings.channels)
    if resize and tuple(image.shape[-2:]) != settings.image_size:
        from torchvision.transforms.v2.functional import resize as resize_image

        image = resize_image(image, list(settings.image_size), antialias=True)
    return image


class ImageSplitDataset(SplitDataset):
    """One split of an image source. Keys: `(epoch, index)` in training (train transforms, randomness
    seeded by (seed, epoch, index) only) or an `int` for evaluation (eval transforms).

    Index arrays and the pixel cache are memory-mapped lazily in each process; pickling (to DataLoader
    workers) sends only the settings.
    """

    get_batch = None  # no whole-batch fast path: every sample is decoded (or read from the pixel cache) alone

    def __init__(self, settings: ImageSettings, split: str) -> None:
        self.settings, self.split = settings, split
        self._len = len(np.load(settings.cache_dir / f"split_{split}.npy", mmap_mode="r"))
        self._state: dict[str, Any] | None = None
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    def _open(self) -> dict[str, Any]:
        if self._state is None:
            s, d = self.settings, self.settings.cache_dir
            load = lambda name: np.load(d / name, mmap_mode="r")  # noqa: E731
            self._state = {
                "ids": load(f"split_{self.split}.npy"),
                "targets": load("targets.npy"),
                "paths": load("paths.npy"),
                "offsets": load("offsets.npy"),
                "pixels": open_pixel_cache(d / PIXEL_FILE) if s.pixel_cache else None,
                "train": build_pipeline(s.train_transforms, "data.transforms.train", s.mean, s.std),
                "eval": build_pipeline(s.eval_transforms, "data.transforms.eval", s.mean, s.std),
            }
        return self._state

    def path_of(self, index: int) -> Path:
        st = self._open()
        return self.settings.root / decode_path(st["paths"], st["offsets"], int(st["ids"][index]))

    def pixels(self, index: int, train: bool) -> torch.Tensor:
        """The uint8 image of sample `index` before the transforms (from the pixel cache when there is one)."""
        st = self._open()
        file_id = int(st["ids"][index])
        if st["pixels"] is not None:
            return torch.from_numpy(np.array(st["pixels"][file_id]))
        items = self.settings.train_transforms if train else self.settings.eval_transforms
        return load_uint8(self.settings, self.path_of(index), resize=not sizes_itself(items))

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        st = self._open()
        for attempt in range(len(self)):
            # bad_samples=skip: a file that fails here is replaced by the next one of the split, the same
            # in every process and after a resume, so the batch keeps its size and the run its exactness.
            i = (index + attempt) % len(self)
            try:
                image = self.pixels(i, train=epoch is not None)
                break
            except DecodeError as exc:
                self._bad_file(exc)
        else:
            raise UserError(f"data.bad_samples: no readable image left in the {self.split} split")
        target = st["targets"][int(st["ids"][i])]
        y = torch.tensor(float(target), dtype=torch.float32) if self.settings.regression else torch.tensor(int(target), dtype=torch.int64)
        # Evaluation keys use epoch -1: eval transforms are normally deterministic, and when not, still repeatable.
        seed = sample_seed(self.settings.seed, -1 if epoch is None else epoch, i)
        return apply_seeded(st["train" if epoch is not None else "eval"], image, seed), y

    def _bad_file(self, exc: DecodeError) -> None:
        if self.settings.bad_samples == "error":
            raise BadSampleError(f"data.bad_samples: {exc} (found while loading; data.bad_samples: skip replaces such files)") from None
        if str(exc) not in self._warned:  # once per file and process, not once per epoch
            self._warned.add(str(exc))
            print(f"warning: skipping unreadable image: {exc} (data.bad_samples: skip)", file=sys.stderr, flush=True)
