"""Write scikit-learn's bundled 8x8 digits as an image folder (no taktstock, no download).

    python scripts/make_digit_images.py data/digit_images                 # DIR/<class>/<n>.png
    python scripts/make_digit_images.py data/digit_images --presplit      # DIR/train|val|test/<class>/
    python scripts/make_digit_images.py DIR --size 32 --format jpeg --copies 10 --rgb

Used by experiments/images_digits.yaml, the image tests and benchmarks/images.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_digits(
    root: Path,
    size: int = 16,
    fmt: str = "png",
    per_class: int | None = None,
    copies: int = 1,
    rgb: bool = False,
    presplit: bool = False,
) -> list[Path]:
    """Write the digits (the first `per_class` of each class, `copies` times each) and return the files.

    Copies after the first are shifted by one pixel per copy, so a larger set is not byte-identical.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = []
    seen = dict.fromkeys(range(10), 0)
    for n, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        if per_class is not None and seen[label] >= per_class:
            continue
        seen[label] += 1
        pixels = (image * (255.0 / 16.0)).astype(np.uint8)
        split = ("train", "train", "train", "val", "test")[n % 5] if presplit else ""
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            shifted = np.roll(pixels, c % 8, axis=1) if c else pixels
            im = Image.fromarray(shifted, mode="L").resize((size, size), Image.Resampling.BILINEAR)
            if rgb:
                im = Image.merge("RGB", (im, im.point(lambda v: 255 - v), im))
            path = folder / f"{n:05d}_{c}.{'jpg' if fmt == 'jpeg' else fmt}"
            im.save(path, quality=95) if fmt == "jpeg" else im.save(path)
            written.append(path)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--format", choices=["png", "jpeg"], default="png")
    p.add_argument("--per-class", type=int, default=None)
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--rgb", action="store_true")
    p.add_argument("--presplit", action="store_true")
    a = p.parse_args()
    files = write_digits(a.root, a.size, a.format, a.per_class, a.copies, a.rgb, a.presplit)
    print(f"wrote {len(files)} images under {a.root}")


if __name__ == "__main__":
    main()
