"""`prepare` for image sources: index, header check, split, statistics and optional pixel cache, cached.

The cache directory `data.cache_dir/<source>-<fingerprint>/` holds memory-mapped arrays (file paths,
targets, one array of file ids per split, optionally the pixels) and `meta.json` (classes, image size,
statistics, skipped files). No pixels are copied unless `data.image_cache` asks for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taktstock.config.schema import Config
from taktstock.data.dataset import FieldSpec, Spec
from taktstock.data.images.dataset import ImageSettings, ImageSplitDataset, load_uint8
from taktstock.data.images.decode import DecodeError, check_header
from taktstock.data.images.index import FileIndex, build_index, encode_paths
from taktstock.data.images.pixel_cache import FILE as PIXEL_FILE
from taktstock.data.images.pixel_cache import pixel_bytes, write_pixel_cache
from taktstock.data.images.stats import channel_stats, sample_positions
from taktstock.data.images.transforms import check_transforms, sizes_itself
from taktstock.data.prepare import split_settings
from taktstock.errors import ConfigError

IMAGE_PREP_VERSION = 1  # bump when the index, split or statistics algorithm changes: invalidates caches
SPLITS = ("train", "val", "test")
_SHOWN = 10  # skipped files named in the warning


@dataclass
class PreparedImages:
    """The prepared dataset of an image source (the seam's prepared-dataset contract)."""

    path: Path
    fingerprint: str
    task: str
    num_outputs: int
    class_names: list[str]
    settings: ImageSettings
    normalize: str
    skipped: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.settings.channels, *self.settings.image_size)

    def split(self, name: str) -> ImageSplitDataset:
        return ImageSplitDataset(self.settings, name)

    def spec(self) -> Spec:
        """Sample spec: input name -> shape (per sample) and dtype; the target is not an input."""
        return {"inputs": FieldSpec(self.input_shape, "float32")}

    def preprocessing(self) -> dict[str, Any]:
        """What predict/export need to turn image files into model inputs exactly as evaluation does."""
        s = self.settings
        return {
            "kind": "image",
            "input_shape": list(self.input_shape),
            "image_size": list(s.image_size),
            "channels": s.channels,
            "normalize": self.normalize,
            "mean": s.mean,
            "std": s.std,
            "eval_transforms": s.eval_transforms,
            "num_outputs": self.num_outputs,
            "class_names": self.class_names,
            "spec": {k: v.to_dict() for k, v in self.spec().items()},
        }


def image_size_of(config: Config) -> tuple[int, int] | None:
    size = config.data.image_size
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def cache_settings(config: Config) -> dict[str, Any]:
    """The settings that change the prepared index (transforms do not: they run per sample)."""
    d = config.data
    return {
        "version": IMAGE_PREP_VERSION,
        "source": d.source,
        "image_column": d.image_column if d.source == "image_csv" else None,
        "target": d.target if d.source == "image_csv" else None,
        "task": config.task,
        **split_settings(config),
        "normalize": d.normalize,
        "image_size": image_size_of(config),
        "channels": d.channels,
        "bad_samples": d.bad_samples,
        "pixel_cache": d.image_cache,
        "memory_budget_mb": d.memory_budget_mb if d.image_cache == "auto" else None,
        "resize": not (sizes_itself(d.transforms.train) or sizes_itself(d.transforms.eval)),
    }


def cache_key(settings: dict[str, Any], files_fingerprint: str) -> str:
    """The prepared cache's key: the file index's fingerprint with the cache settings (tests pin its values)."""
    return hashlib.sha256(json.dumps({"files": files_fingerprint, **settings}, sort_keys=True).encode()).hexdigest()[:16]


def prepare_images(config: Config, verbose: bool = False) -> PreparedImages:
    """The prepared image dataset, built only when the fingerprint (files, sizes, mtimes, settings) is new."""
    check_transforms(config)
    index = build_index(config)
    settings = cache_settings(config)
    fp = cache_key(settings, index.fingerprint)
    path = Path(config.data.cache_dir) / f"{config.data.source}-{fp}"
    if not (path / "meta.json").is_file():
        if verbose:
            print(f"preparing {config.data.source} {config.data.path} -> {path}")
        _build(config, index, settings, path)
    prepared = _load(config, path, fp)
    _check_output_shape(prepared)
    return prepared


def _check_output_shape(prepared: PreparedImages) -> None:
    """Batches need one shape: a transform list that ends at another size is a config error, found now."""
    want = prepared.input_shape
    for phase, key in (("train", (0, 0)), ("eval", 0)):
        split = next((prepared.split(s) for s in SPLITS if len(prepared.split(s))), None)
        if split is None:
            return
        try:
            x, _ = split[key]
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"data.transforms.{phase}: fails on {split.path_of(0)} ({exc})") from None
        if tuple(x.shape) != want or x.dtype != torch.float32:
            raise ConfigError(
                f"data.transforms.{phase}: produces {x.dtype} images of shape {list(x.shape)}, expected float32 {list(want)} "
                "(data.channels x data.image_size); end the list at that size or leave the resizing to taktstock"
            )


def _build(config: Config, index: FileIndex, settings: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(index.files)
    sizes, bad = _check_headers(index)
    _report_bad(config, index, bad)
    good = np.array([i for i in range(n) if i not in bad], np.int64)
    size = image_size_of(config) or sizes[int(good[0])]
    classes, targets = _targets(config, index)
    img_settings = ImageSettings(
        tmp,
        index.root,
        config.seed,
        config.data.channels,
        size,
        bad_samples=config.data.bad_samples,
        regression=config.task == "regression",
    )
    load = lambda i: load_uint8(img_settings, index.root / index.files[i], resize=True)  # noqa: E731
    cached = _use_pixel_cache(config, settings, n, size)
    if cached:
        failed = write_pixel_cache(tmp / PIXEL_FILE, n, config.data.channels, size, load, good)
        if failed:  # decodes that the header check could not foresee
            _report_bad(config, index, {i: "cannot be decoded" for i in failed})
            bad.update({i: "cannot be decoded" for i in failed})
            good = np.setdiff1d(good, failed)
    parts = _split(config, index, good, targets)
    for name, ids in parts.items():
        np.save(tmp / f"split_{name}.npy", ids)
    buffer, offsets = encode_paths(index.files)
    np.save(tmp / "paths.npy", buffer)
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "targets.npy", targets)
    stats = _stats(config, parts["train"], load, tmp if cached else None)
    meta = {
        "settings": settings,
        "root": str(index.root),
        "classes": classes,
        "image_size": list(size),
        "mean": stats[0] if stats else None,
        "std": stats[1] if stats else None,
        "pixel_cache": cached,
        "skipped": [index.files[i] for i in sorted(bad)],
        "counts": {k: len(v) for k, v in parts.items()},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, path)
    except OSError:  # a concurrent preparer (parallel trials) got there first: its result is the same
        shutil.rmtree(tmp, ignore_errors=True)


def _check_headers(index: FileIndex) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    def one(i: int) -> tuple[int, tuple[int, int] | str]:
        try:
            return i, check_header(index.root / index.files[i])
        except DecodeError as exc:
            return i, str(exc).removeprefix(f"{index.root / index.files[i]}: ")

    sizes: dict[int, tuple[int, int]] = {}
    bad: dict[int, str] = {}
    # Opening files is I/O bound: threads overlap it on network and spinning disks.
    with ThreadPoolExecutor(max_workers=16) as pool:
        for i, result in pool.map(one, range(len(index.files))):
            if isinstance(result, str):
                bad[i] = result
            else:
                sizes[i] = result
    return sizes, bad


def _report_bad(config: Config, index: FileIndex, bad: dict[int, str]) -> None:
    if not bad:
        return
    first = min(bad)
    if config.data.bad_samples == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(
            f"data.bad_samples: {index.root / index.files[first]}: {bad[first]}{more}; "
            "fix or remove it, or set data.bad_samples: skip to leave such files out"
        )
    if len(bad) == len(index.files):
        raise ConfigError(f"data.path: none of the {len(bad)} images in {config.data.path} is readable")
    shown = ", ".join(f"{index.files[i]} ({bad[i]})" for i in sorted(bad)[:_SHOWN])
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    print(f"warning: skipping {len(bad)} unreadable image(s) under {index.root}: {shown}{more}", file=sys.stderr, flush=True)


def _targets(config: Config, index: FileIndex) -> tuple[list[str], np.ndarray]:
    if config.task == "regression":
        if config.data.source == "imagefolder":
            raise ConfigError(f"loss.name: {config.loss.name} is a regression loss; imagefolder classes need a classification loss")
        try:
            return [], np.asarray(index.targets, dtype=np.float32)
        except ValueError:
            raise ConfigError(f"data.target: non-numeric target values in {config.data.path} for a regression loss") from None
    if config.data.source == "imagefolder":
        classes = sorted(set(index.targets))  # torchvision's ImageFolder class order
        lookup = {c: i for i, c in enumerate(classes)}
        return classes, np.array([lookup[t] for t in index.targets], np.int64)
    from taktstock.data.sources import _targets as class_ids  # the csv source's class order (numbers numerically)

    ids, classes = class_ids(index.targets, config)
    return classes, ids


def _use_pixel_cache(config: Config, settings: dict[str, Any], n: int, size: tuple[int, int]) -> bool:
    mode = config.data.image_cache
    if mode == "auto":
        return settings["resize"] and pixel_bytes(n, config.data.channels, size) <= config.data.memory_budget_mb * 2**20
    return mode == "memmap"


def _split(config: Config, index: FileIndex, good: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    if index.presplit:
        given = np.array(index.given_split)[good]
        return {s: good[given == s] for s in SPLITS}
    from taktstock.data.prepare import _split_indices  # the same split as every other source

    positions = _split_indices(config, targets[good])
    return {s: good[positions[s]] for s in SPLITS}


def _stats(config: Config, train_ids: np.ndarray, load: Any, cache_dir: Path | None) -> tuple[list[float], list[float]] | None:
    """Per-channel statistics: every training image when the pixel cache has them, else a bounded sample."""
    if cache_dir is not None:
        pixels = np.load(cache_dir / PIXEL_FILE, mmap_mode="r")
        chunks = (torch.from_numpy(np.asarray(pixels[np.sort(train_ids[i : i + 1024])])) for i in range(0, len(train_ids), 1024))
    else:
        chunks = (torch.stack(images) for images in _decoded_chunks(train_ids[sample_positions(len(train_ids))], load))
    return channel_stats(chunks, config.data.channels, config.data.normalize)


def _decoded_chunks(ids: np.ndarray, load: Any, size: int = 256) -> Any:
    for start in range(0, len(ids), size):
        images = []
        for i in ids[start : start + size].tolist():
            # A file the header check passed but that fails to decode: data.bad_samples deals with it in the worker.
            with contextlib.suppress(DecodeError):
                images.append(load(i))
        if images:
            yield images


def _load(config: Config, path: Path, fp: str) -> PreparedImages:
    meta = json.loads((path / "meta.json").read_text())
    t = config.data.transforms
    settings = ImageSettings(
        cache_dir=path,
        root=Path(meta["root"]),
        seed=config.seed,
        channels=config.data.channels,
        image_size=tuple(meta["image_size"]),
        train_transforms=list(t.train),
        eval_transforms=list(t.eval),
        mean=meta["mean"],
        std=meta["std"],
        bad_samples=config.data.bad_samples,
        pixel_cache=meta["pixel_cache"],
        regression=config.task == "regression",
    )
    classes = meta["classes"]
    if config.task == "regression":
        num_outputs = 1
    else:
        num_outputs = 1 if config.loss.name == "bce_with_logits" else len(classes)
    return PreparedImages(path, fp, config.task, num_outputs, classes, settings, config.data.normalize, meta["skipped"])
