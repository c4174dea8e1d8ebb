"""Per-token loss, accuracy and perplexity that skip positions labelled -100 (padding, prompts).

The step and the tallies call these on (logits, labels) so padding never counts: sums and counts instead of
means let batches of different real-token counts combine exactly (sum of sums / sum of counts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def _flat(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    # (B, C) vs (B,) for classification; (B, T, V) vs (B, T) for language modelling.
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def token_loss_sum(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of cross-entropy over real positions, number of real positions), in float32 / int64."""
    flat_logits, flat_labels = _flat(logits, labels)
    total = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (flat_labels != IGNORE_INDEX).sum()


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy per real token (the language-modelling training loss); 0 when nothing counts."""
    total, count = token_loss_sum(logits, labels)
    return total / count.clamp(min=1)


def correct_count(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(argmax hits, real positions), both int64, ignoring -100 labels."""
    flat_logits, flat_labels = _flat(logits, labels)
    real = flat_labels != IGNORE_INDEX
    return ((flat_logits.argmax(-1) == flat_labels) & real).sum(), real.sum()


def perplexity(loss_sum: float, count: int) -> float:
    """exp(mean per-token loss); inf when the mean overflows, nan with no tokens."""
    if count <= 0:
        return math.nan
    mean = loss_sum / count
    return math.exp(mean) if mean < 700 else math.inf


class TokenLossTally:
    """Running (loss sum, token count) over a validation pass, on the device until read."""

    def __init__(self) -> None:
        self.loss_sum: Tensor | None = None
        self.count: Tensor | None = None

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        total, count = token_loss_sum(logits, labels)
        total = total.double()
        self.loss_sum = total if self.loss_sum is None else self.loss_sum + total
        self.count = count if self.count is None else self.count + count

    def compute(self) -> dict[str, float]:
        """{"loss": per-token mean, "perplexity": exp of it, "tokens": real tokens seen}."""
        if self.loss_sum is None or self.count is None:
            return {"loss": math.nan, "perplexity": math.nan, "tokens": 0}
        total, count = float(self.loss_sum), int(self.count)
        return {"loss": total / count if count else math.nan, "perplexity": perplexity(total, count), "tokens": count}


class TokenMetrics:
    """Validation metrics of a language model: `<prefix>/loss` (cross-entropy per real token) and `<prefix>/perplexity`.

    The interface of `EpochMetrics` (update, update_loss, compute, reset). Both numbers come from the
    logits through `TokenLossTally`, never from the step's loss (which a user loss or label smoothing may
    change), so perplexity is exactly exp(per-token cross-entropy).
    """

    def __init__(self, device: torch.device, prefix: str = "val") -> None:
        self.device, self.prefix = device, prefix
        self.tally = TokenLossTally()
        self._loss_only: list[tuple[Tensor, int]] = []

    def update(self, output: Tensor, target: Tensor, loss: Tensor) -> None:
        self.tally.update(output, target)

    def update_loss(self, loss: Tensor, count: int) -> None:
        """A custom step that returns only the loss: its mean over `count` is all there is to average."""
        self._loss_only.append((loss.detach().double() * count, count))

    def compute(self) -> dict[str, float]:
        if self.tally.count is None and self._loss_only:
            total, count = float(sum(t for t, _ in self._loss_only)), sum(c for _, c in self._loss_only)
            return {f"{self.prefix}/loss": total / count if count else math.nan, f"{self.prefix}/perplexity": perplexity(total, count)}
        self._sum_over_ranks()
        values = self.tally.compute()
        return {f"{self.prefix}/loss": values["loss"], f"{self.prefix}/perplexity": values["perplexity"]}

    def _sum_over_ranks(self) -> None:
        """Each rank evaluated its shard of the split (as torchmetrics' sync does for `EpochMetrics`): add them up."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        if self.tally.loss_sum is not None and self.tally.count is not None:
            sums[0], sums[1] = self.tally.loss_sum, self.tally.count
        dist.all_reduce(sums)  # every rank calls compute(): a collective, in the same order everywhere
        self.tally.loss_sum, self.tally.count = sums[0], sums[1].long()

    def reset(self) -> None:
        self.tally = TokenLossTally()
        self._loss_only.clear()
