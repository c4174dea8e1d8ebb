"""The learning-rate range test (Smith 2017; fastai `lr_find`, Lightning `Tuner.lr_find`).

The learning rate grows exponentially from `min_lr` to `max_lr` over at most `steps` optimizer steps of real
training on the training split; the loss of each step is recorded, smoothed with a bias-corrected exponential
moving average (beta 0.98), and the test stops when the smoothed loss exceeds 4x its minimum (divergence).
The suggestion is Lightning's rule, the *steepest descent*: the learning rate where the smoothed loss falls
fastest (the most negative gradient over the log-spaced points, skipping the first 10 and the last one).

Parameter groups keep their ratios: a group configured at 10x optim.lr runs at 10x the tested rate. In a
multi-process run every rank takes the same steps; the loss is averaged over ranks, so all stop together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from taktstock.training.probe import Probe, endless

SMOOTHING = 0.98
DIVERGENCE = 4.0
SKIP_BEGIN, SKIP_END = 10, 1


@dataclass
class LrFinderResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw loss of each step (mean over micro-batches and ranks)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "completed"  # or "diverged", "non-finite loss"
    suggestion: float | None = None


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / max(steps - 1, 1))


def steepest_descent(lrs: list[float], smoothed: list[float]) -> float | None:
    """Lightning's suggestion: the lr at the most negative gradient of the smoothed loss; None with too few points."""
    losses = np.asarray(smoothed[SKIP_BEGIN:-SKIP_END])
    if len(losses) < 3:
        return None
    return float(lrs[SKIP_BEGIN + int(np.gradient(losses).argmin())])


def find_lr(probe: Probe, steps: int = 100, min_lr: float = 1e-7, max_lr: float = 10.0) -> LrFinderResult:
    """Run the range test on `probe` (its model and optimizer are trained and then useless)."""
    base = probe.config.optim.lr
    ratios = [group["lr"] / base for group in probe.optimizer.param_groups]
    accumulate = probe.config.train.accumulate_grad_batches
    batches = endless(probe.batches())
    result, avg, best = LrFinderResult(), 0.0, math.inf
    for i, lr in enumerate(lr_schedule(min_lr, max_lr, steps)):
        for group, ratio in zip(probe.optimizer.param_groups, ratios, strict=True):
            group["lr"] = float(lr) * ratio
        loss = probe.step([next(batches) for _ in range(accumulate)])
        if probe.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(loss)  # the same value, so the same stop decision, on every rank
            loss = loss / probe.dist.world_size
        value = float(loss)
        if not math.isfinite(value):
            result.stopped = "non-finite loss"
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        smooth = avg / (1 - SMOOTHING ** (i + 1))
        result.lrs.append(float(lr))
        result.losses.append(value)
        result.smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > DIVERGENCE * best:
            result.stopped = "diverged"
            break
    result.suggestion = steepest_descent(result.lrs, result.smoothed)
    return result


def plot_lr_finder(result: LrFinderResult, path: str, title: str) -> None:
    """Loss against learning rate (log x): raw and smoothed, the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    if result.suggestion is not None:
        k = result.lrs.index(result.suggestion)
        ax.plot([result.suggestion], [result.smoothed[k]], "o", color="C3", markersize=8, label=f"suggested lr {result.suggestion:.2e}")
        ax.axvline(result.suggestion, color="C3", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # the divergence at the end would squash the interesting part
        low, first = min(finite + [v for v in result.losses if math.isfinite(v)]), finite[0]
        ax.set_ylim(low - 0.1 * (first - low + 1e-12), max(first, low) + 0.3 * (first - low + 1e-12))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
