"""The file index of an image source: which files, their labels and (for pre-split folders) their split.

`imagefolder`: DIR/<class>/<file> (torchvision's ImageFolder layout and order), or DIR/train|val|test/<class>/
as given splits. `image_csv`: a manifest with an image path column (relative to the manifest) and a target.
The fingerprint covers the file list, sizes and modification times, not the pixel bytes, so a 100 GB
folder is fingerprinted by one stat per file.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taktstock.config.schema import Config
from taktstock.errors import ConfigError

GIVEN_SPLITS = ("train", "val", "test")


@dataclass
class FileIndex:
    """Files relative to `root`, a target per file, and a given split per file ('' when none is given)."""

    root: Path
    files: list[str]
    targets: list[str]
    given_split: list[str]
    fingerprint: str

    @property
    def presplit(self) -> bool:
        return bool(self.given_split) and self.given_split[0] != ""


def build_index(config: Config) -> FileIndex:
    """The index of `data.path` for the configured image source."""
    if not config.data.path:
        raise ConfigError(f"data.path: required for data.source={config.data.source}")
    path = Path(config.data.path)
    if config.data.source == "imagefolder":
        files, targets, splits = _folder(path)
    else:
        files, targets, splits = _manifest(path, config)
        path = path.parent
    if not files:
        raise ConfigError(f"data.path: no image files in {config.data.path}")
    return FileIndex(path.resolve(), files, targets, splits, _fingerprint(path.resolve(), files, targets, splits))


def _folder(root: Path) -> tuple[list[str], list[str], list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    if not root.is_dir():
        raise ConfigError(f"data.path: image folder not found: {root}")
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
    presplit = "train" in subdirs and set(subdirs) <= set(GIVEN_SPLITS)
    parts = [(s, root / s) for s in subdirs] if presplit else [("", root)]
    classes = sorted({e.name for _, d in parts for e in os.scandir(d) if e.is_dir()})
    if not classes:
        raise ConfigError(f"data.path: {root} has no class sub-folders (expected DIR/<class>/<image> or DIR/train/<class>/<image>)")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    files, targets, splits = [], [], []
    for split, d in parts:
        # torchvision's own walk: same files and order as torchvision.datasets.ImageFolder.
        for file, idx in make_dataset(str(d), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True):
            files.append(os.path.relpath(file, root))
            targets.append(classes[idx])
            splits.append(split)
    return files, targets, splits


def _manifest(path: Path, config: Config) -> tuple[list[str], list[str], list[str]]:
    if not path.is_file():
        raise ConfigError(f"data.path: manifest not found: {path}")
    column, target = config.data.image_column, config.data.target
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for key, name in (("data.image_column", column), ("data.target", target)):
            if name not in header:
                raise ConfigError(f"{key}: column '{name}' not in {path} (columns: {', '.join(header)})")
        rows = [r for r in reader if (r.get(column) or "").strip()]
    files, missing = [], []
    for r in rows:
        rel = r[column].strip()
        files.append(rel)
        if not (path.parent / rel).is_file():
            missing.append(rel)
    if missing:
        raise ConfigError(f"data.path: {len(missing)} image(s) listed in {path} do not exist, e.g. {missing[0]}")
    return files, [r[target].strip() for r in rows], [""] * len(files)


def _fingerprint(root: Path, files: list[str], targets: list[str], splits: list[str]) -> str:
    h = hashlib.sha256(str(root).encode())
    for rel, target, split in zip(files, targets, splits, strict=True):
        st = os.stat(root / rel)
        h.update(f"\0{rel}\0{target}\0{split}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def encode_paths(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Paths as one UTF-8 byte buffer plus offsets: no per-file Python objects in DataLoader workers
    (forked lists of str are copied page by page as their reference counts change)."""
    encoded = [f.encode() for f in files]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def decode_path(buffer: np.ndarray, offsets: np.ndarray, i: int) -> str:
    return bytes(buffer[offsets[i] : offsets[i + 1]]).decode()
