"""Per-step training bookkeeping: running loss/accuracy sums and the non-finite-loss marker.

At ~1 ms per step every small tensor operation costs ~1 % of a small model's throughput, and any
conversion to a Python value would make the host wait for the device. So a step does two device
operations here (one in-place add for the loss sums, one argmax for accuracy) and appends references
to lists; every `FOLD` micro-batches, and before anything reads the tally, the deferred work is done
in a handful of vectorised operations, still without a host synchronisation.

Only the loss sums are updated per step: float addition is order-dependent, and a resumed run must
write the same metrics bit for bit as an uninterrupted one, so they are added in step order. What is
deferred is order-free (integer counts, "the first bad step"), so where a fold happens never changes
a result.
"""

from __future__ import annotations

import torch

from taktstock.metrics.collection import class_scores
from taktstock.training.state import Sums

FOLD = 64  # micro-batches between folds: amortises the fold's ~10 ops; bounds the retained tensors
_NONE = torch.iinfo(torch.int64).max  # "no non-finite loss yet", larger than every step


class StepTally:
    """Interval (since the last log line) and epoch sums, and the step of the first non-finite loss."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # Two lanes (interval, epoch) in one tensor per quantity: one op updates both.
        self._loss = torch.zeros(2, dtype=torch.float64, device=device)
        self._correct = torch.zeros(2, dtype=torch.int64, device=device)
        self.interval = Sums(self._loss[0], self._correct[0], 0)
        self.epoch = Sums(self._loss[1], self._correct[1], 0)
        self._first_bad = torch.full((), _NONE, dtype=torch.int64, device=device)
        self._losses: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._hits: list[tuple[torch.Tensor, torch.Tensor]] = []  # (predicted class, target) per micro-batch

    def record(self, loss: torch.Tensor, out: torch.Tensor | None, target: torch.Tensor | None, n: int, step: int) -> None:
        """One micro-batch: its mean loss over `n` samples; `out`/`target` count correct predictions."""
        loss = loss.detach()
        self._loss.add_(loss, alpha=n)  # float64 accumulation of loss * n, both lanes, in one op
        self.interval.count += n
        self.epoch.count += n
        self._losses.append(loss)
        self._steps.append(step)
        if out is not None and target is not None:
            # argmax builds no autograd graph, so `out` needs no detach (one dispatch fewer per step).
            self._hits.append((class_scores(out).argmax(-1), target))
        if len(self._losses) >= FOLD:
            self.fold()

    def fold(self) -> None:
        """Apply the deferred work: correct-prediction counts and the non-finite check."""
        self._fold_hits()
        self._fold_losses()

    def _fold_hits(self) -> None:
        if not self._hits:
            return
        preds, targets = zip(*self._hits, strict=True)
        if all(p.shape == t.shape for p, t in self._hits) and len({p.shape[1:] for p in preds}) == 1:
            correct = (torch.cat(preds) == torch.cat(targets)).sum()
        else:  # targets that broadcast against predictions, or varying trailing sizes: one by one
            correct = torch.stack([(p == t).sum() for p, t in self._hits]).sum()
        self._correct.add_(correct)
        self._hits.clear()

    def _fold_losses(self) -> None:
        if not self._losses:
            return
        steps = torch.tensor(self._steps, dtype=torch.int64)
        if self.device.type == "cuda":  # pinned + non_blocking: no wait for the device
            steps = steps.pin_memory()
        steps = steps.to(self.device, non_blocking=True)
        # Steps are ascending: the smallest step with a non-finite loss is the first one.
        candidate = torch.where(torch.isfinite(torch.stack(self._losses)), _NONE, steps).min()
        torch.minimum(self._first_bad, candidate, out=self._first_bad)
        self._losses.clear()
        self._steps.clear()

    def first_bad_step(self) -> torch.Tensor:
        """The 0-based step whose loss was first non-finite, or -1 (a device tensor: reading it syncs)."""
        self._fold_losses()
        return torch.where(self._first_bad == _NONE, -1, self._first_bad)

    def sums(self) -> tuple[Sums, Sums]:
        """(interval, epoch) with every recorded micro-batch counted; read them only at logging points (reading syncs)."""
        self._fold_hits()
        return self.interval, self.epoch

    def interval_checked(self) -> None:
        """The interval's loss sum was read and is finite, so every loss since it began is: nothing to search.

        (A non-finite value never leaves a float sum, and a bad loss from before the interval would
        have stopped the run at the previous check.)"""
        self._losses.clear()
        self._steps.clear()

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        self.fold()
        return {"interval": self.interval.state_dict(), "epoch": self.epoch.state_dict()}

    def load_state_dict(self, d: dict[str, dict[str, torch.Tensor]]) -> None:
        self._losses.clear()
        self._steps.clear()
        self._hits.clear()
        self.interval.load_state_dict(d["interval"])
        self.epoch.load_state_dict(d["epoch"])
