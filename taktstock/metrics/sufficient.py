"""Exact sufficient statistics of the built-in epoch metrics, kept on the device between validations.

Classification keeps integer counts (a confusion matrix), regression float64 sums; every metric follows from
them with the semantics of the torchmetrics 1.9 classes taktstock used before (`MulticlassAccuracy(average=
"micro")`, `MulticlassF1Score`/`Precision`/`Recall(average="macro")`, `MeanSquaredError`, `MeanAbsoluteError`,
`R2Score`), without importing torchmetrics: its package `__init__` imports torchvision and transformers when they
are installed, ~5.6 s per process. Counts and sums add across batches and ranks, so one `all_reduce` of
`state()` gives the whole split's metrics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from taktstock.metrics.tokens import IGNORE_INDEX  # labels that never count (padding, prompt positions)

# Above this a C x C int64 matrix would be large (8 MB at 1,024 classes, 3.2 GB at 20,000): per-class
# (correct, predicted, actual) counts are all the metrics need, only the confusion-matrix plot needs more.
MATRIX_MAX_CLASSES = 1024


class ConfusionCounts:
    """Counts of (target, argmax prediction) pairs: a confusion matrix, or its diagonal and margins for many classes."""

    def __init__(self, num_classes: int, device: torch.device | str) -> None:
        self.num_classes = num_classes
        self.full = num_classes <= MATRIX_MAX_CLASSES
        cells = num_classes * num_classes if self.full else 3 * num_classes
        self._trash = cells  # ignored labels are counted in one extra cell, dropped on read: no boolean indexing
        self.counts = torch.zeros(cells + 1, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, scores: Tensor, target: Tensor) -> None:
        """Add a batch: (N, C) scores and (N,) integer labels; labels equal to -100 are skipped."""
        c = self.num_classes
        pred = scores.argmax(-1).reshape(-1)
        target = target.reshape(-1).long()
        ignored = target == IGNORE_INDEX
        if self.full:
            index = (target * c + pred).masked_fill(ignored, self._trash)
        else:  # actual (target), predicted (c + pred), correct (2c + target when pred == target)
            correct = torch.where(pred == target, 2 * c + target, self._trash)
            index = torch.cat([target, c + pred, correct]).masked_fill(ignored.repeat(3), self._trash)
        # scatter_add_ rather than bincount: bincount reads its input's max on the host (a sync per batch on
        # CUDA); scatter_add_ into int64 is exact and deterministic.
        self.counts.scatter_add_(0, index, torch.ones_like(index))

    def tp_fp_fn(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class true positives, false positives and false negatives, int64 on the CPU."""
        counts = self.counts[: self._trash].cpu()
        c = self.num_classes
        if self.full:
            matrix = counts.view(c, c)
            tp = matrix.diagonal()
            return tp, matrix.sum(0) - tp, matrix.sum(1) - tp
        actual, predicted, tp = counts.view(3, c)
        return tp, predicted - tp, actual - tp

    def matrix(self) -> Tensor | None:
        """The (C, C) confusion matrix, rows true and columns predicted (as torchmetrics'), or None for many classes."""
        if not self.full:
            return None
        return self.counts[: self._trash].cpu().view(self.num_classes, self.num_classes)

    def scores(self) -> dict[str, float]:
        return classification_scores(*self.tp_fp_fn())

    def state(self) -> Tensor:
        return self.counts

    def load(self, state: Tensor) -> None:
        self.counts = state.round().to(torch.int64).reshape(self.counts.shape)


def _safe_divide(num: Tensor, denom: Tensor) -> Tensor:
    """num / denom with 0 where denom is 0 (torchmetrics' `_safe_divide`, zero_division=0)."""
    num, denom = num.double(), denom.double()
    return torch.where(denom == 0, torch.zeros_like(num), num / torch.where(denom == 0, torch.ones_like(denom), denom))


def per_class_scores(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, Tensor]:
    """Per-class precision, recall and F1 (torchmetrics' average=None): 0 where a denominator is 0."""
    return {
        "precision": _safe_divide(tp, tp + fp),
        "recall": _safe_divide(tp, tp + fn),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
    }


def classification_scores(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, float]:
    """acc (micro) and macro f1/precision/recall; classes with tp + fp + fn == 0 (never seen, never predicted)
    are left out of the macro mean, as torchmetrics' `_adjust_weights_safe_divide` does."""
    present = (tp + fp + fn) > 0
    macro = {k: _safe_divide(v[present].sum(), present.sum()) for k, v in per_class_scores(tp, fp, fn).items()}
    acc = _safe_divide(tp.sum(), (tp + fn).sum())
    return {"acc": float(acc), **{k: float(macro[k]) for k in ("f1", "precision", "recall")}}


class RegressionSums:
    """Per output column: count, sum of squared error, of absolute error, of y and of y^2 (float64)."""

    def __init__(self, device: torch.device | str, columns: int = 1) -> None:
        self.sums = torch.zeros(5, columns, dtype=torch.float64, device=device)
        self._fresh = True  # no batch yet: the first one sets the column count (a host flag, no device read)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predictions and targets of the same shape, (N,) or (N, K)."""
        y = target.double().reshape(target.shape[0], -1)
        err = pred.double().reshape(y.shape) - y
        if self._fresh and y.shape[1] != self.sums.shape[1]:
            self.sums = torch.zeros(5, y.shape[1], dtype=torch.float64, device=self.sums.device)
        self._fresh = False
        n = torch.full_like(y[0], y.shape[0])
        self.sums += torch.stack([n, (err * err).sum(0), err.abs().sum(0), y.sum(0), (y * y).sum(0)])

    def scores(self) -> dict[str, float]:
        return regression_scores(self.sums)

    def state(self) -> Tensor:
        return self.sums.reshape(-1)

    def load(self, state: Tensor) -> None:
        self.sums, self._fresh = state.reshape(self.sums.shape), False


def regression_scores(sums: Tensor) -> dict[str, float]:
    """mse and mae over every element; r2 per column, averaged (torchmetrics' uniform_average)."""
    n, sse, sae, sum_y, sum_y2 = sums.double().cpu()
    elements = float(n.sum())
    mse = float(sse.sum()) / elements if elements else math.nan
    mae = float(sae.sum()) / elements if elements else math.nan
    return {"mse": mse, "mae": mae, "r2": _r2(n[0], sse, sum_y, sum_y2)}


def _r2(n: Tensor, rss: Tensor, sum_y: Tensor, sum_y2: Tensor) -> float:
    """R2Score's rules: 1 - rss/tss, but 1 when rss ~ 0 and 0 when only tss ~ 0 (|x| <= 1e-4: a constant target).
    With fewer than two samples torchmetrics raises; this returns nan (undefined, as scikit-learn's r2_score)."""
    if float(n) < 2:
        return math.nan
    tss = sum_y2 - sum_y * (sum_y / n)
    rss_zero, tss_zero = rss.abs() <= 1e-4, tss.abs() <= 1e-4
    scores = torch.where(rss_zero, 1.0, torch.where(tss_zero, 0.0, 1 - rss / torch.where(tss_zero, 1.0, tss)))
    return float(scores.mean())
