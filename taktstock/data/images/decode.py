"""Decoding image files to uint8 CxHxW tensors, and the cheap header check run at prepare time."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

# The last bytes of a complete file: a truncated PNG lacks its IEND chunk, a truncated JPEG its EOI marker.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DecodeError(Exception):
    """A file that is not a readable image."""


def decode(path: str | Path, channels: int) -> torch.Tensor:
    """The image at `path` as a uint8 (channels, H, W) tensor: torchvision's decoder, else Pillow."""
    from torchvision.io import ImageReadMode, decode_image

    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(_PNG_SIGNATURE) and not _png_chunks_intact(data):
        # torchvision's libpng binding can crash the process (SIGSEGV) on damaged PNG data instead of
        # raising (pytorch/vision#3613): damaged chunks go to Pillow, which raises a clean error.
        return _decode_pil(path, channels)
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except (RuntimeError, ValueError):
        pass  # formats torchvision lacks (e.g. TIFF, BMP) and broken files: Pillow decides
    return _decode_pil(path, channels)


def _png_chunks_intact(data: bytes) -> bool:
    """Every PNG chunk's CRC-32 matches (one zlib pass over the file, no decompression)."""
    view, pos = memoryview(data), len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data) or zlib.crc32(view[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = end + 4
    return False


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
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt, (width, height) = im.format, im.size
    except UnidentifiedImageError:
        raise DecodeError(f"{path}: not an image file Pillow recognises") from None
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
