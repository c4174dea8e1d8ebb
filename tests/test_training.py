"""The training loop, run in-process on tiny digits experiments: learning, best model, early stopping,
exact reproducibility, accumulation, clipping, precision, schedules, losses, logging and whole-split metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from torch import nn

from taktstock.checkpoint.manager import load_checkpoint
from taktstock.checkpoint.weights import load_weights
from taktstock.config.loader import validate
from taktstock.config.schema import Config
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError
from taktstock.training import components
from taktstock.training.distributed import DistEnv
from taktstock.training.rng import seed_everything
from taktstock.training.run import RunResult, train

pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(**sections: Any) -> Config:
    return validate(tiny_config(**sections), {}, "test")


def run(workdir: Path, name: str = "run", **sections: Any) -> tuple[RunResult, Path, Config]:
    config = make_config(**sections)
    result = train(config, run_dir=workdir / name)
    return result, workdir / name, config


def records(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl record that has `key`, in order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if key in r]


def trained_model(config: Config, weights: Path) -> nn.Module:
    model = components.build_model_for(config, prepare(config), torch.device("cpu"), DistEnv())[0]
    load_weights(model, weights)
    return model.eval()


def outputs_on(config: Config, weights: Path, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    part = prepare(config).split(split)
    x, y = part.x, part.y
    with torch.no_grad():
        return trained_model(config, weights)(torch.from_numpy(x)), torch.from_numpy(y)


def steps_per_epoch(config: Config) -> int:
    n_batches = math.ceil(len(prepare(config).split("train").y) / config.train.batch_size)
    return math.ceil(n_batches / config.train.accumulate_grad_batches)


def test_loss_decreases_on_digits(workdir: Path) -> None:
    result, run_dir, _ = run(workdir, train={"epochs": 3})
    train_loss = [v for _, v in records(run_dir, "train/loss")]
    val_loss = [v for _, v in records(run_dir, "val/loss")]
    assert len(train_loss) == len(val_loss) == 3
    assert train_loss[0] > train_loss[1] > train_loss[2]
    assert val_loss[-1] < 0.6 * val_loss[0]
    assert result.stop_reason == "completed"


def test_best_checkpoint_holds_the_weights_of_the_best_validation(workdir: Path) -> None:
    # Frequent validation with an uneven last eval batch (270 val samples in batches of 100).
    result, run_dir, config = run(workdir, train={"epochs": 3, "val_every_n_steps": 4, "eval_batch_size": 100})
    val_acc = records(run_dir, "val/acc")
    assert len(val_acc) >= 10
    best_value = max(v for _, v in val_acc)
    best_step = next(s for s, v in val_acc if v == best_value)  # mode max: the first occurrence wins
    assert result.best == best_value
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert ckpt["loop"]["step"] == best_step
    best = load_file(str(run_dir / "best.safetensors"))
    assert best.keys() == ckpt["model"].keys()
    assert all(torch.equal(best[k], ckpt["model"][k]) for k in best)
    assert json.loads((run_dir / "checkpoints" / "best.json").read_text())["step"] == best_step
    # The logged val/acc is the accuracy over the whole val split with those weights, not a mean of
    # per-batch accuracies (which the uneven last batch would skew).
    out, y = outputs_on(config, run_dir / "best.safetensors")
    correct = (out.argmax(1) == y).double()
    assert abs(best_value - float(correct.mean())) < 1e-6
    val_loss = dict(records(run_dir, "val/loss"))[best_step]
    assert abs(val_loss - float(nn.functional.cross_entropy(out, y))) < 1e-5
    per_batch = float(torch.stack([c.mean() for c in correct.split(100)]).mean())
    if per_batch != float(correct.mean()):
        assert abs(best_value - per_batch) > 1e-6


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_after_patience_validations_without_improvement(workdir: Path, patience: int) -> None:
    # Monitoring val/loss in "max" mode: the first validation is the best one, every later one is worse.
    result, run_dir, config = run(
        workdir,
        train={"epochs": 20},
        metrics={"monitor": "val/loss", "mode": "max"},
        early_stopping={"enabled": True, "patience": patience},
    )
    spe = steps_per_epoch(config)
    assert result.stop_reason == "early_stopping"
    assert len(records(run_dir, "val/loss")) == 1 + patience
    assert result.steps == (1 + patience) * spe < config.train.epochs * spe
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["loop"]["step"] == spe
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_same_config_and_seed_give_byte_identical_weights(workdir: Path) -> None:
    sections = {"train": {"epochs": 2}, "data": {"augment": {"noise_std": 0.05}}}
    run(workdir, "a", **sections)
    run(workdir, "b", **sections)
    assert (workdir / "a" / "model.safetensors").read_bytes() == (workdir / "b" / "model.safetensors").read_bytes()
    assert (workdir / "a" / "metrics.jsonl").read_bytes() == (workdir / "b" / "metrics.jsonl").read_bytes()
    # The DataLoader path (worker process, per-sample collate) trains exactly like the in-memory path.
    run(workdir, "loader", train={"epochs": 2}, data={"augment": {"noise_std": 0.05}, "in_memory": "never", "num_workers": 1})
    assert (workdir / "a" / "model.safetensors").read_bytes() == (workdir / "loader" / "model.safetensors").read_bytes()
    run(workdir, "other_seed", seed=2, **sections)
    assert (workdir / "a" / "model.safetensors").read_bytes() != (workdir / "other_seed" / "model.safetensors").read_bytes()


def test_gradient_accumulation_matches_the_large_batch(workdir: Path) -> None:
    # 4 micro-batches of 16 cut from the same epoch permutation = one batch of 64 (no dropout, full cycles).
    common = {"epochs": 1, "max_steps": 6}
    run(workdir, "big", model={"dropout": 0.0}, train=common | {"batch_size": 64})
    run(workdir, "acc", model={"dropout": 0.0}, train=common | {"batch_size": 16, "accumulate_grad_batches": 4})
    big, acc = load_file(str(workdir / "big" / "model.safetensors")), load_file(str(workdir / "acc" / "model.safetensors"))
    assert all(torch.allclose(big[k], acc[k], atol=1e-5) for k in big)
    result, _, config = run(workdir, "acc3", train={"epochs": 1, "batch_size": 64, "accumulate_grad_batches": 3})
    assert result.steps == steps_per_epoch(config) == math.ceil(math.ceil(1257 / 64) / 3)


def test_grad_clipping_bounds_the_update(workdir: Path) -> None:
    lr, clip = 1.0, 1e-3
    sections = {"optim": {"name": "sgd", "lr": lr}, "train": {"epochs": 1, "max_steps": 1, "grad_clip_norm": clip}}
    config = make_config(**sections)
    seed_everything(config.seed, True)  # the initial weights, built as the run builds them
    initial = components.build_model_for(config, prepare(config), torch.device("cpu"), DistEnv())[0].state_dict()
    run(workdir, **sections)
    final = load_file(str(workdir / "run" / "model.safetensors"))
    update = torch.sqrt(sum(((final[k] - initial[k]).double() ** 2).sum() for k in final))
    # Plain SGD moves by lr * clipped gradient: its norm is exactly lr * clip (the raw norm is far larger).
    assert abs(float(update) - lr * clip) < 1e-3 * lr * clip


def test_bf16_precision_trains_on_cpu(workdir: Path) -> None:
    result, run_dir, _ = run(workdir, train={"epochs": 2, "precision": "bf16"})
    val_loss = [v for _, v in records(run_dir, "val/loss")]
    assert all(math.isfinite(v) for v in val_loss) and val_loss[1] < val_loss[0]
    assert result.best is not None and result.best > 0.7
    # Weights stay float32 (autocast computes in bf16, parameters and optimizer state do not change dtype).
    assert all(t.dtype == torch.float32 for t in load_file(str(run_dir / "model.safetensors")).values())


def _lrs(run_dir: Path) -> list[tuple[int, float]]:
    return records(run_dir, "lr")


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle", "warmup_cosine", "plateau"])
def test_each_scheduler_shapes_the_learning_rate(workdir: Path, name: str) -> None:
    base = 0.003
    scheduler: dict[str, Any] = {"name": name}
    sections: dict[str, Any] = {"train": {"epochs": 2, "log_every_n_steps": 1}}
    if name == "step":
        scheduler |= {"step_size": 7, "gamma": 0.5}
    if name == "cosine":
        scheduler |= {"min_lr": 1e-4}
    if name == "warmup_cosine":
        scheduler |= {"warmup_steps": 10}
    if name == "plateau":
        # "max" on val/loss never improves after the first validation: every later one decays the lr.
        scheduler |= {"patience": 0, "gamma": 0.5}
        sections = {
            "train": {"epochs": 2, "log_every_n_steps": 1, "val_every_n_steps": 5},
            "metrics": {"monitor": "val/loss", "mode": "max"},
        }
    result, run_dir, _ = run(workdir, scheduler=scheduler, **sections)
    lrs = _lrs(run_dir)
    total = result.steps
    assert [s for s, _ in lrs] == list(range(1, total + 1))
    lr = dict(lrs)  # the lr in effect for the next step, logged after step s
    if name == "step":
        assert all(math.isclose(lr[s], base * 0.5 ** (s // 7), rel_tol=1e-6) for s in lr)
    elif name == "cosine":
        assert all(math.isclose(lr[s], 1e-4 + (base - 1e-4) * (1 + math.cos(math.pi * s / total)) / 2, rel_tol=1e-6) for s in lr)
    elif name == "onecycle":
        peak = max(lr, key=lr.get)
        assert abs(peak - 0.3 * total) <= 2 and math.isclose(lr[peak], base, rel_tol=0.02)
        # The last step runs at the lr logged after the step before it: the schedule's floor.
        assert lr[1] < base / 10 and lr[total - 1] < base / 1e4
    elif name == "warmup_cosine":
        assert all(math.isclose(lr[s], base * (s + 1) / 11, rel_tol=1e-6) for s in range(1, 10))
        assert all(lr[s + 1] < lr[s] for s in range(10, total - 1)) and lr[total] < base / 100
    else:
        val_steps = {s for s, _ in records(run_dir, "val/loss")}
        for s in range(1, total):
            ratio = lr[s + 1] / lr[s]
            assert math.isclose(ratio, 1.0) or (math.isclose(ratio, 0.5) and s in val_steps)
        assert lr[total] <= base * 0.5 ** (len(val_steps) - 2)


def test_cross_entropy_with_label_smoothing_and_class_weights(workdir: Path) -> None:
    weights = [1.0, 2.0, 1.0, 1.0, 0.5, 1.0, 1.0, 3.0, 1.0, 1.0]
    loss = {"name": "cross_entropy", "label_smoothing": 0.1, "class_weights": weights}
    # Uneven eval batches (270 = 4 * 64 + 14): the logged loss is still the weighted mean over the whole split.
    _result, run_dir, config = run(workdir, loss=loss, train={"epochs": 1, "eval_batch_size": 64})
    out, y = outputs_on(config, run_dir / "model.safetensors")
    expected = nn.functional.cross_entropy(out, y, weight=torch.tensor(weights), label_smoothing=0.1)
    assert abs(records(run_dir, "val/loss")[-1][1] - float(expected)) < 1e-5
    # Smoothing keeps the loss above zero even for confident correct predictions.
    assert float(expected) > float(nn.functional.cross_entropy(out, y, weight=torch.tensor(weights)))


@pytest.mark.parametrize(("loss", "metric"), [("mse", "val/mse"), ("l1", "val/mae")])
def test_regression_losses_on_diabetes(workdir: Path, loss: str, metric: str) -> None:
    _result, run_dir, config = run(
        workdir,
        data={"source": "diabetes"},
        loss={"name": loss},
        optim={"lr": 0.05},
        metrics={"monitor": metric, "mode": "min"},
        train={"epochs": 3, "batch_size": 32},
    )
    data = prepare(config)
    assert data.split("train").y.dtype == np.float32 and data.num_outputs == 1
    loss_values = [v for _, v in records(run_dir, "val/loss")]
    metric_values = [v for _, v in records(run_dir, metric)]
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(loss_values, metric_values, strict=True))
    assert loss_values[-1] < loss_values[0]
    out, y = outputs_on(config, run_dir / "model.safetensors")
    err = out.squeeze(1) - y
    expected = float((err**2).mean()) if loss == "mse" else float(err.abs().mean())
    assert math.isclose(metric_values[-1], expected, rel_tol=1e-5)


def test_bce_with_logits_on_breast_cancer_reports_class_metrics(workdir: Path) -> None:
    _result, run_dir, config = run(
        workdir, data={"source": "breast_cancer"}, loss={"name": "bce_with_logits"}, train={"epochs": 3, "batch_size": 32}
    )
    out, y = outputs_on(config, run_dir / "model.safetensors")
    assert out.shape == (len(y), 1)  # one logit per sample
    acc = float(((out.squeeze(1) > 0).long() == y).double().mean())
    assert math.isclose(records(run_dir, "val/acc")[-1][1], acc, abs_tol=1e-6)
    assert acc > 0.9
    f1 = records(run_dir, "val/f1")[-1][1]
    assert 0.8 < f1 <= 1.0


def test_tensorboard_scalars_are_written_at_the_logged_steps(workdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _result, run_dir, config = run(workdir, train={"epochs": 2, "log_every_n_steps": 5}, logging={"tensorboard": True, "plots": False})
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss_step", "train/acc_step", "lr", "val/acc", "val/loss", "train/loss"} <= set(tags)
    spe = steps_per_epoch(config)
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(5, 2 * spe + 1, 5))
    assert [e.step for e in events.Scalars("lr")] == list(range(5, 2 * spe + 1, 5))
    assert [e.step for e in events.Scalars("val/acc")] == [spe, 2 * spe]
    logged = records(run_dir, "val/acc")
    assert [(e.step, pytest.approx(e.value, abs=1e-6)) for e in events.Scalars("val/acc")] == logged


def test_eval_batch_size_does_not_change_validation_metrics(workdir: Path) -> None:
    run(workdir, "default", train={"epochs": 1})
    run(workdir, "small", train={"epochs": 1, "eval_batch_size": 7})
    assert records(workdir / "default", "val/acc") == records(workdir / "small", "val/acc")
    for (_, a), (_, b) in zip(records(workdir / "default", "val/loss"), records(workdir / "small", "val/loss"), strict=True):
        assert math.isclose(a, b, rel_tol=1e-5)


def test_without_validation_split_train_loss_can_be_monitored(workdir: Path) -> None:
    result, run_dir, _ = run(workdir, data={"val_fraction": 0.0}, train={"epochs": 2}, metrics={"monitor": "train/loss", "mode": "min"})
    assert records(run_dir, "val/acc") == []
    train_loss = records(run_dir, "train/loss")
    assert result.best == min(v for _, v in train_loss)
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["loop"]["step"] == min(train_loss, key=lambda r: r[1])[0]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"val_fraction": 0.0}}, "metrics.monitor: 'val/acc' needs a validation split"),
        ({"loss": {"name": "cross_entropy", "class_weights": [1.0, 2.0]}}, "loss.class_weights: 2 weights given, but the data has 10"),
        ({"loss": {"name": "bce_with_logits"}}, "loss.name: bce_with_logits is for binary targets, but the data has 10 classes"),
        ({"train": {"device": "cuda:7" if torch.cuda.is_available() else "cuda"}}, "train.device"),
        ({"data": {"source": "wine", "augment": {"hflip": True}}}, "data.augment.hflip: needs image inputs"),
    ],
)
def test_config_that_does_not_fit_the_data_fails_before_the_run_directory_exists(
    workdir: Path, sections: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run(workdir, **sections)
    assert not (workdir / "run").exists()


def test_an_old_run_directory_is_replaced_only_with_overwrite(workdir: Path) -> None:
    run(workdir, train={"epochs": 3}, checkpoint={"every_n_steps": 10}, logging={"tensorboard": True, "plots": False})
    assert (workdir / "run" / "checkpoints" / "step-00000060.pt").is_file()
    # A different config is refused (tests/test_relaunch.py checks the directory is left byte-identical).
    with pytest.raises(ConfigError, match=r"train\.epochs \(3 -> 1\).*--overwrite"):
        run(workdir, train={"epochs": 1}, checkpoint={"every_n_steps": 10})
    assert (workdir / "run" / "checkpoints" / "step-00000060.pt").is_file()
    # Stale higher-numbered checkpoints would outlive pruning and be chosen by a later --resume.
    result = train(make_config(train={"epochs": 1}, checkpoint={"every_n_steps": 10}), run_dir=workdir / "run", overwrite=True)
    run_dir = workdir / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt")) == ["step-00000010.pt", "step-00000020.pt"]
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["step"] == 20 == result.steps
    assert max(s for s, _ in records(run_dir, "val/acc")) == 20
    assert not (run_dir / "tensorboard").exists()


def test_evaluate_reproduces_the_best_validation_and_runs_without_the_training_accelerator(workdir: Path) -> None:
    from taktstock.evaluation.evaluate import evaluate

    result, run_dir, _ = run(workdir, train={"epochs": 2, "eval_batch_size": 50})
    values = evaluate(run_dir, checkpoint="best", split="val", quiet=True)
    assert values["val/acc"] == pytest.approx(result.best, abs=1e-6)
    if not torch.cuda.is_available():
        # A run trained on a GPU (train.device: cuda) can still be evaluated on a CPU-only machine.
        saved = (run_dir / "config.yaml").read_text()
        (run_dir / "config.yaml").write_text(saved.replace("device: auto", "device: cuda"))
        assert evaluate(run_dir, checkpoint="best", split="val", quiet=True) == values
