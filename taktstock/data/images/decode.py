"""Decoding image files to uint8 CxHxW tensors, and the cheap header check run at prepare time."""

from __future__ import annotations

from pathlib import Path

import torch

# The last bytes of a complete file: a truncated PNG lacks its IEND chunk, a truncated JPEG its EOI marker.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


class DecodeError(Exception):
    """A file that is not a readable image."""


def decode(path: str | Path, channels: int) -> torch.Tensor:
    """The image at `path` as a uint8 (channels, H, W) tensor: torchvision's decoder, else Pillow."""
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        return decode_image(str(path), mode=mode)
    except (RuntimeError, ValueError):
        pass  # formats torchvision lacks (e.g. TIFF, BMP) and broken files: Pillow decides
    return _decode_pil(path, channels)


def _decode_pil(path: str | Path, channels: int) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(path) as im:
            return pil_to_tensor(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"{path}: not a readable image ({exc})") from None


def check_header(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header, after checking that a PNG or JPEG is not truncated.

    Reads the header and the last few KiB only: cheap enough for a folder of a million files.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt, (width, height) = im.format, im.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"{path}: not a readable image ({exc})") from None
    if fmt in ("PNG", "JPEG"):
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 4096))
            tail = f.read()
        complete = tail.endswith(_PNG_END) if fmt == "PNG" else _JPEG_END in tail  # JPEGs may carry trailing padding
        if not complete:
            raise DecodeError(f"{path}: truncated {fmt} file ({size} bytes)")
    return height, width
