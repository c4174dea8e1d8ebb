"""Preprocessing: raw images -> data/processed/digits.npz, the array file the dataset reads.

    python -m data.preprocess

The example uses scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).
For your own images, one folder per class (root/<class>/*.png|jpg), replace `load_raw()` with
`load_image_folder(Path("path/to/images"), size=32)`. Decoding thousands of image files is slow,
so it happens once here instead of on every training run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PROCESSED = Path(__file__).resolve().parent / "processed" / "digits.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_raw() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 greyscale images (N, H, W), class id per image, class names)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 intensities -> 8-bit grey
    return images, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]


def load_image_folder(root: Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images in root/<class name>/ as greyscale uint8, optionally resized to size x size."""
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            with Image.open(path) as img:
                img = img.convert("L")
                if size:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(img, dtype=np.uint8))
                labels.append(label)
    if not images:
        raise FileNotFoundError(f"no images in {root}/<class>/ ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def write_processed(path: Path = PROCESSED) -> Path:
    """Write the array file atomically (a half-written file never looks finished)."""
    images, labels, classes = load_raw()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, images=images, labels=labels, classes=np.array(classes))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(f"wrote {write_processed()}")
