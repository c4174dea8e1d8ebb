"""Per-channel normalisation statistics of the training images, in the [0, 1] scale of ToDtype(scale=True)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

STATS_SAMPLE = 4096  # images decoded at prepare time for the statistics of a large training split


def sample_positions(n: int, limit: int = STATS_SAMPLE) -> np.ndarray:
    """Evenly spaced positions: a bounded, deterministic sample that spans every class of a sorted folder."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def channel_stats(images: Iterable[torch.Tensor], channels: int, kind: str) -> tuple[list[float], list[float]] | None:
    """(mean, std) lists for `torchvision.transforms.v2.Normalize`, or None for `normalize: none`.

    standard: per-channel mean/std; global: one mean/std over all channels; minmax: per-channel (min, max - min).
    Sums are float64 over uint8 batches (N, C, H, W), so the result does not depend on the batch split.
    """
    if kind == "none":
        return None
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    lo, hi = np.full(channels, 255.0), np.zeros(channels)
    count = 0
    for batch in images:
        x = batch.to(torch.float64).transpose(0, 1).reshape(channels, -1)
        total += x.sum(1).numpy()
        total_sq += (x * x).sum(1).numpy()
        lo, hi = np.minimum(lo, x.amin(1).numpy()), np.maximum(hi, x.amax(1).numpy())
        count += x.shape[1]
    if count == 0:
        return [0.0] * channels, [1.0] * channels
    if kind == "global":
        mean = total.sum() / (count * channels)
        var = total_sq.sum() / (count * channels) - mean**2
        shift, scale = np.full(channels, mean), np.full(channels, np.sqrt(max(var, 0.0)))
    elif kind == "minmax":
        shift, scale = lo, hi - lo
    else:
        shift = total / count
        scale = np.sqrt(np.maximum(total_sq / count - shift**2, 0.0))
    scale = np.where(scale > 1e-3, scale, 255.0)  # a constant channel would divide by zero: leave it as is
    return (shift / 255.0).tolist(), (scale / 255.0).tolist()
