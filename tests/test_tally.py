"""Training metrics are exact whatever the bookkeeping defers: the running sums, accuracy counts and the
first non-finite step equal a plain per-step computation, however the deferred work is folded; and the
fused optimizer kernel is chosen by default where torch has one, and never where it is switched off."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from taktstock.config.loader import validate
from taktstock.training import tally as tally_mod
from taktstock.training.optim import build_optimizer
from taktstock.training.run import train
from taktstock.training.tally import StepTally
from tests.conftest import tiny_config


def _micro_batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """(loss, logits, target, n) with varying sizes, some losses non-finite."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        n = 1 + int(torch.randint(0, 9, (), generator=g))
        loss = torch.rand((), generator=g) * 3
        if i in (37, 90):
            loss = torch.tensor(math.inf if i == 37 else math.nan)
        out.append((loss, torch.randn(n, 4, generator=g), torch.randint(0, 4, (n,), generator=g), n))
    return out


def _reference(batches: list[Any], start: int, stop: int) -> tuple[float, int, int]:
    """Loss sum (float64, in step order), correct predictions, samples: the plain per-step computation."""
    loss, correct, count = 0.0, 0, 0
    for x, out, target, n in batches[start:stop]:
        loss += float(x) * n
        correct += int((out.argmax(-1) == target).sum())
        count += n
    return loss, correct, count


@pytest.mark.parametrize("fold_every", [1, 7, tally_mod.FOLD, 1000])
def test_sums_and_first_bad_step_equal_the_per_step_computation(fold_every: int) -> None:
    batches = _micro_batches(150)
    tally = StepTally(torch.device("cpu"))
    first_bad = -1
    for i, (loss, out, target, n) in enumerate(batches[:30]):
        tally.record(loss, out, target, n, step=i)
        if i % fold_every == 0:
            tally.fold()  # where folds happen must not change any result
    interval, epoch = tally.sums()
    ref = _reference(batches, 0, 30)
    assert (float(interval.loss), int(interval.correct), interval.count) == ref  # bit-exact float64 sum
    assert int(tally.first_bad_step()) == first_bad
    interval.reset()
    for i, (loss, out, target, n) in enumerate(batches[30:], start=30):
        tally.record(loss, out, target, n, step=i // 2)  # accumulation: two micro-batches per step
        if i % fold_every == 0:
            tally.fold()
    interval, epoch = tally.sums()
    assert int(interval.correct) == _reference(batches, 30, 150)[1] and interval.count == _reference(batches, 30, 150)[2]
    assert math.isnan(float(interval.loss))  # a non-finite loss shows in the sums too
    assert (int(epoch.correct), epoch.count) == _reference(batches, 0, 150)[1:]
    assert int(tally.first_bad_step()) == 37 // 2  # the first of the two bad micro-batches, as its step


def test_state_dict_round_trip_continues_with_identical_sums() -> None:
    batches = _micro_batches(100, seed=1)[:80]
    whole = StepTally(torch.device("cpu"))
    for i, (loss, out, target, n) in enumerate(batches):
        whole.record(loss, out, target, n, i)
    part = StepTally(torch.device("cpu"))
    for i, (loss, out, target, n) in enumerate(batches[:33]):
        part.record(loss, out, target, n, i)
    resumed = StepTally(torch.device("cpu"))
    resumed.load_state_dict(part.state_dict())  # a checkpoint mid-fold
    for i, (loss, out, target, n) in enumerate(batches[33:], start=33):
        resumed.record(loss, out, target, n, i)
    for a, b in zip(whole.sums(), resumed.sums(), strict=True):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert int(whole.first_bad_step()) == int(resumed.first_bad_step()) == 37


def test_targets_that_broadcast_are_compared_batch_by_batch() -> None:
    tally = StepTally(torch.device("cpu"))
    tally.record(torch.tensor(1.0), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]), 2, 0)
    tally.record(torch.tensor(1.0), torch.tensor([[0.0, 1.0]]), torch.tensor([1]), 1, 0)  # other batch size
    tally.record(torch.tensor(1.0), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor(1), 2, 1)  # a scalar target
    assert int(tally.sums()[0].correct) == 1 + 1 + 2


# -- end to end: the logged training metrics -------------------------------------------------------
RECORDED: list[tuple[float, torch.Tensor, torch.Tensor, int]] = []


def recording_step(model: nn.Module, batch: Any, loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """train.step_fn: the default step, remembering what each training micro-batch returned."""
    x, y = batch
    out = model(x)
    loss = loss_fn(out, y)
    if model.training:
        RECORDED.append((float(loss.detach()), out.detach().clone(), y.clone(), len(y)))
    return loss, out, y


def test_logged_training_loss_and_accuracy_are_exact_interval_and_epoch_means(workdir: Path) -> None:
    # The list of the module the run imports `train.step_fn` from (pytest may have imported this file under another name).
    recorded = importlib.import_module("tests.test_tally").RECORDED
    recorded.clear()
    raw = tiny_config(train={"epochs": 2, "batch_size": 48, "accumulate_grad_batches": 2, "log_every_n_steps": 5})
    raw["train"]["step_fn"] = "tests.test_tally:recording_step"
    train(validate(raw, {}, "<test>"), run_dir=workdir / "run")
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = len(recorded) // 2
    assert per_epoch * 2 == len(recorded) and per_epoch % 2 == 1  # an odd epoch: the last cycle is partial
    # Micro-batch index -> optimizer step (1-based) it belongs to: cycles of two, restarting each epoch.
    steps_per_epoch = (per_epoch + 1) // 2
    step_of = [e * steps_per_epoch + (i // 2) + 1 for e in range(2) for i in range(per_epoch)]

    def means(idx: list[int]) -> tuple[float, float]:
        loss = 0.0
        for i in idx:
            loss += recorded[i][0] * recorded[i][3]
        n = sum(recorded[i][3] for i in idx)
        correct = sum(int((recorded[i][1].argmax(-1) == recorded[i][2]).sum()) for i in idx)
        return loss / n, correct / n

    logged = [r for r in records if "train/loss_step" in r]
    assert [r["step"] for r in logged] == list(range(5, 2 * steps_per_epoch + 1, 5))
    previous = 0
    for r in logged:
        loss, acc = means([i for i, s in enumerate(step_of) if previous < s <= r["step"]])
        assert (r["train/loss_step"], r["train/acc_step"]) == (loss, acc)
        previous = r["step"]
    epochs = [r for r in records if "train/acc" in r]
    assert len(epochs) == 2
    for e, r in enumerate(epochs):
        assert (r["train/loss"], r["train/acc"]) == means(list(range(e * per_epoch, (e + 1) * per_epoch)))


# -- the optimizer kernel ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("optim", "fused"),
    [
        ({"name": "adamw"}, True),  # default: fused where torch has the kernel
        ({"name": "sgd", "momentum": 0.9}, True),
        ({"name": "adamw", "fused": False}, False),
        ({"name": "adamw", "foreach": True}, False),  # an explicit implementation choice wins
        ({"name": "rmsprop"}, False),  # no fused kernel
    ],
)
def test_fused_optimizer_kernel_by_default_where_available(optim: dict[str, Any], fused: bool) -> None:
    config = validate(tiny_config(optim=optim), {}, "<test>")
    opt = build_optimizer(config.optim, nn.Linear(3, 2))
    assert bool(opt.defaults.get("fused")) is fused
