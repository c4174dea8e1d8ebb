"""Training-time augmentation whose randomness is a pure function of (seed, epoch, sample index).

Counter-based random numbers (SplitMix64) instead of a stateful generator: the same sample in the
same epoch is augmented identically whether it is loaded by worker 0, worker 3, the in-memory
batch path, or after a resume. That is what makes resumed runs bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch

from taktstock.config.schema import AugmentConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, epoch: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """(len(indices), count) uniforms in [0, 1), fixed by (seed, epoch, index, stream)."""
    key = _mix(_mix(_mix(np.array([seed], np.uint64)) ^ np.uint64(epoch)) ^ np.uint64(stream))
    idx = np.asarray(indices, dtype=np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)[None, :]
    z = _mix(_mix(idx) ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def is_active(cfg: AugmentConfig) -> bool:
    return cfg.shift > 0 or cfg.hflip or cfg.noise_std > 0


def augment_batch(x: torch.Tensor, indices: np.ndarray, epoch: int, seed: int, cfg: AugmentConfig) -> torch.Tensor:
    """Augment a batch of samples (N, ...) whose dataset indices are `indices`."""
    if not is_active(cfg):
        return x
    x = x.clone()
    if cfg.hflip and x.ndim >= 3:  # images only: reversing a feature vector would scramble its columns
        flip = torch.from_numpy(uniform(seed, epoch, indices, 1, 1)[:, 0] < 0.5)
        if flip.any():
            x[flip] = x[flip].flip(-1)
    if cfg.shift > 0 and x.ndim >= 3:
        s = cfg.shift
        offsets = np.floor(uniform(seed, epoch, indices, 2, 2) * (2 * s + 1)).astype(np.int64) - s
        x = _shift(x, offsets)
    if cfg.noise_std > 0:
        u = uniform(seed, epoch, indices, 3, 2 * int(np.prod(x.shape[1:])))
        half = u.shape[1] // 2
        # Box-Muller: two uniforms -> one standard normal per element.
        normal = np.sqrt(-2.0 * np.log1p(-u[:, :half])) * np.cos(2 * np.pi * u[:, half:])
        x = x + torch.from_numpy((normal * cfg.noise_std).astype(np.float32)).reshape(x.shape).to(x.device)
    return x


def _shift(x: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    """Translate each image by its (dy, dx) with zero fill; grouped by offset so it stays vectorised."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2], x.shape[-1]
    for dy, dx in {tuple(o) for o in offsets.tolist()}:
        sel = torch.from_numpy((offsets[:, 0] == dy) & (offsets[:, 1] == dx))
        src = x[sel]
        dst = torch.zeros_like(src)
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        dst[..., yd, xd] = src[..., ys, xs]
        out[sel] = dst
    return out
