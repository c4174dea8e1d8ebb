"""torchvision.transforms.v2 pipelines from config, applied with randomness fixed by (seed, epoch, index).

torchvision's v2 transforms draw from the global torch generator. Each sample's call runs inside
`torch.random.fork_rng` with the CPU generator seeded from (seed, epoch, index), so a sample is
transformed identically in any worker, in any order and after a resume, and the caller's RNG
stream (dropout, initialisation) is left exactly as it was.
"""

from __future__ import annotations

import difflib
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Any

import torch

from taktstock.errors import ConfigError

# Transforms that resize: a list with one of them gets no resize to data.image_size in front (crops such
# as RandomCrop(size, padding) do get it: they work on the resized image, as in CIFAR-style training).
SIZING = frozenset({"Resize", "RandomResizedCrop", "RandomResize", "RandomShortestSize", "ScaleJitter"})


def item_name(item: str | dict[str, Any]) -> str:
    return item if isinstance(item, str) else next(iter(item))


def sizes_itself(items: Sequence[str | dict[str, Any]]) -> bool:
    """Whether a transform list resizes itself (then taktstock adds no resize in front)."""
    return any(item_name(i) in SIZING for i in items)


def _kwargs(value: dict[str, Any] | None) -> dict[str, Any]:
    from torchvision.transforms.v2 import InterpolationMode

    kwargs = dict(value or {})
    # YAML has no torch dtypes or enums: accept their names.
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    if isinstance(kwargs.get("interpolation"), str):
        kwargs["interpolation"] = InterpolationMode(kwargs["interpolation"].lower())
    return kwargs


def build_items(items: Sequence[str | dict[str, Any]], where: str) -> list[Callable[..., Any]]:
    """Instantiate config items; an unknown name or bad arguments is a ConfigError naming the item."""
    from torchvision.transforms import v2

    built = []
    for i, item in enumerate(items):
        name = item_name(item)
        label = f"{where}[{i}] ({name})"
        cls = getattr(v2, name, None)
        if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
            names = [n for n in dir(v2) if isinstance(getattr(v2, n), type) and issubclass(getattr(v2, n), v2.Transform)]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{label}: unknown torchvision.transforms.v2 transform '{name}'{hint}")
        try:
            built.append(cls(**_kwargs(None if isinstance(item, str) else item[name])))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise ConfigError(f"{label}: bad arguments ({exc})") from None
    return built


def build_pipeline(
    items: Sequence[str | dict[str, Any]], where: str, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The user's transforms, then float conversion and normalisation unless the list already has them.

    The input is a uint8 CxHxW tensor, already resized to data.image_size unless the list sizes itself
    (`sizes_itself`); uint8 is what ColorJitter, RandAugment and friends expect.
    """
    from torchvision.transforms import v2

    steps = build_items(items, where)
    names = {item_name(i) for i in items}
    if "ToDtype" not in names:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None and std is not None and "Normalize" not in names:
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on (seed, epoch, index) only."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, epoch, index), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def apply_seeded(pipeline: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int) -> torch.Tensor:
    """`pipeline(image)` with the global CPU generator seeded by `seed`, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return pipeline(image)


def check_transforms(config: Any) -> None:
    """Config-time checks of data.transforms (names, arguments) and of their fit with data.image_cache."""
    t = config.data.transforms
    build_items(t.train, "data.transforms.train")
    build_items(t.eval, "data.transforms.eval")
    if config.data.image_cache == "memmap" and (sizes_itself(t.train) or sizes_itself(t.eval)):
        raise ConfigError(
            "data.image_cache: memmap stores images resized to data.image_size, but data.transforms resize "
            f"themselves ({', '.join(sorted(SIZING & {item_name(i) for i in [*t.train, *t.eval]}))}); use image_cache: none"
        )
