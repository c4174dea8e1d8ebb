"""User code plugged in by config: registered models/sources (plugins), models and datasets by import
path, custom loss, extra metrics, custom training step, callbacks, and the dry run."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli, tiny_config, write_config

from taktstock.errors import ConfigError


def write_package(root: Path, name: str, modules: dict[str, str]) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module, code in modules.items():
        (pkg / f"{module}.py").write_text(textwrap.dedent(code))


REGISTRY = """
    import numpy as np
    from torch import nn

    from taktstock.data.sources import RawData, register_source
    from taktstock.models.registry import register_model


    @register_model("tiny_net")
    class TinyNet(nn.Module):
        def __init__(self, input_shape, num_outputs, width: int = 16):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.ReLU(), nn.Linear(width, num_outputs))

        def forward(self, x):
            return self.net(x)


    @register_source("blobs")
    def blobs(config):
        rng = np.random.default_rng(config.seed)
        centers = rng.normal(0, 3, (3, 5))
        y = np.arange(300) % 3
        x = (centers[y] + rng.normal(0, 1, (300, 5))).astype(np.float32)
        return RawData(x, y.astype(np.int64), fingerprint=f"blobs:{config.seed}", class_names=["a", "b", "c"])
"""

LOSSES = """
    import torch
    from torch import nn


    class FocalLoss(nn.Module):
        def __init__(self, gamma: float):
            super().__init__()
            self.gamma = gamma

        def forward(self, logits, target):
            logp = torch.log_softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
            return (-((1 - logp.exp()) ** self.gamma) * logp).mean()


    def focal(gamma: float = 2.0):
        return FocalLoss(gamma)
"""

METRICS = """
    import torch
    from torchmetrics import Metric


    class ErrorCount(Metric):
        def __init__(self):
            super().__init__()
            self.add_state("errors", default=torch.tensor(0), dist_reduce_fx="sum")

        def update(self, scores, target):
            self.errors += (scores.argmax(-1) != target).sum()

        def compute(self):
            return self.errors.float()
"""

CALLBACKS = """
    import json
    from pathlib import Path


    class Recorder:
        def __init__(self):
            self.events = []

        def _add(self, hook, trainer, **extra):
            self.events.append({"hook": hook, "step": trainer.state.step, "epoch": trainer.state.epoch, **extra})

        def on_train_start(self, trainer):
            loss = trainer.p.loss_fn
            self._add("on_train_start", trainer, loss=type(loss).__name__, gamma=getattr(loss, "gamma", None))

        def on_step_end(self, trainer):
            self._add("on_step_end", trainer)

        def on_validation_end(self, trainer, metrics):
            self._add("on_validation_end", trainer, metrics=metrics)

        def on_epoch_end(self, trainer):
            self._add("on_epoch_end", trainer)

        def on_train_end(self, trainer):
            self._add("on_train_end", trainer)
            Path("callback_events.json").write_text(json.dumps(self.events))


    class StopAtStep3:
        def on_step_end(self, trainer):
            if trainer.state.step == 3:
                trainer.state.stop_reason = "callback"
"""


def test_plugins_loss_metrics_and_callbacks_from_a_user_package(workdir: Path) -> None:
    write_package(workdir, "myproj", {"registry": REGISTRY, "losses": LOSSES, "metrics": METRICS, "callbacks": CALLBACKS})
    config = tiny_config(
        plugins=["myproj.registry"],
        data={"source": "blobs"},
        loss={"name": "myproj.losses:focal", "kwargs": {"gamma": 1.5}},
        metrics={
            "monitor": "val/multiclassauroc",
            "mode": "max",
            "extra": ["myproj.metrics:ErrorCount", "torchmetrics.classification:MulticlassAUROC"],
        },
        optim={"name": "adamw", "lr": 0.02},
        train={"epochs": 2, "batch_size": 16, "log_every_n_steps": 5, "callbacks": ["myproj.callbacks:Recorder"]},
    )
    config["model"] = {"name": "tiny_net", "width": 8}  # replaces the MLP arguments of tiny_config
    write_config(workdir / "exp.yaml", config)
    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir, check=True)

    events = json.loads((workdir / "callback_events.json").read_text())
    hooks = [e["hook"] for e in events]
    steps = json.loads((workdir / "run" / "run.json").read_text())["steps"]
    assert hooks[0] == "on_train_start" and hooks[-1] == "on_train_end"
    assert events[0]["loss"] == "FocalLoss" and events[0]["gamma"] == 1.5  # the factory got loss.kwargs
    assert [e["step"] for e in events if e["hook"] == "on_step_end"] == list(range(1, steps + 1))
    assert [e["epoch"] for e in events if e["hook"] == "on_epoch_end"] == [0, 1]
    # Each epoch ends with a validation that precedes the epoch-end hook.
    assert hooks.count("on_validation_end") == 2
    assert all(hooks[i - 1] == "on_validation_end" for i, h in enumerate(hooks) if h == "on_epoch_end")

    last = [e for e in events if e["hook"] == "on_validation_end"][-1]["metrics"]
    n_val = round(300 * 0.15)
    # The extra metric saw exactly the validation predictions the built-in accuracy saw.
    assert last["val/errorcount"] == pytest.approx((1 - last["val/acc"]) * n_val, abs=1e-3)
    assert last["val/acc"] > 0.8 and 0.8 < last["val/multiclassauroc"] <= 1.0  # separable blobs: both high after training
    logged = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/multiclassauroc" in r for r in logged)

    # evaluate re-imports the plugins named in the run's saved config.
    run_cli("evaluate", "run", cwd=workdir, check=True)
    test_metrics = json.loads((workdir / "run" / "eval" / "metrics.json").read_text())["metrics"]
    assert {"test/errorcount", "test/multiclassauroc", "test/acc"} <= set(test_metrics)


TWO_INPUT = """
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset


    class Blobs(Dataset):
        def __init__(self, n: int = 300, seed: int = 0):
            rng = np.random.default_rng(seed)
            centers = rng.normal(0, 3, (3, 6))
            self.y = np.arange(n) % 3
            self.x = (centers[self.y] + rng.normal(0, 1, (n, 6))).astype(np.float32)
            self.classes = ["a", "b", "c"]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]


    class TwoInputNet(nn.Module):
        def __init__(self, input_shape, num_outputs, split: int = 2, width: int = 8):
            super().__init__()
            self.left = nn.Linear(split, width)
            self.right = nn.Linear(input_shape[0] - split, width)
            self.head = nn.Linear(2 * width, num_outputs)

        def forward(self, inputs: dict):
            return self.head(torch.relu(torch.cat([self.left(inputs["left"]), self.right(inputs["right"])], dim=1)))


    def dict_step(model, batch, loss_fn):
        x, y = batch
        out = model({"left": x[:, :2], "right": x[:, 2:]})
        return loss_fn(out, y), out, y
"""


def test_custom_step_feeds_a_dict_input_model_from_a_user_dataset(workdir: Path) -> None:
    write_package(workdir, "twoin", {"code": TWO_INPUT})
    config = tiny_config(
        data={"source": "twoin.code:Blobs", "kwargs": {"n": 300, "seed": 3}},
        optim={"name": "adamw", "lr": 0.02},
        train={"epochs": 3, "batch_size": 32, "log_every_n_steps": 5, "step_fn": "twoin.code:dict_step"},
    )
    config["model"] = {"name": "twoin.code:TwoInputNet", "split": 2}
    write_config(workdir / "exp.yaml", config)

    dry = run_cli("train", "exp.yaml", "--dry-run", cwd=workdir, check=True).stdout
    assert "outputs: (32, 3) float32; targets: (32,) int64" in dry
    assert not (workdir / "experiments" / "runs").exists()
    # Without the custom step the model cannot take the batch: the dry run says where it failed.
    bad = run_cli("train", "exp.yaml", "train.step_fn=null", "--dry-run", cwd=workdir)
    assert bad.returncode == 2 and "the first batch failed" in bad.stderr and "Traceback" not in bad.stderr

    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir, check=True)
    run_cli("evaluate", "run", cwd=workdir, check=True)  # evaluation goes through the same step
    test_metrics = json.loads((workdir / "run" / "eval" / "metrics.json").read_text())["metrics"]
    assert test_metrics["test/acc"] > 0.8


LOSS_ONLY = """
    import torch


    def reconstruction_step(model, batch, loss_fn):
        x, _ = batch  # an autoencoder-style objective: the targets are the inputs
        return torch.nn.functional.mse_loss(model(x), x.flatten(1)[:, : model.out_features])
"""


def test_loss_only_step_logs_loss_without_task_metrics_and_callback_can_stop(workdir: Path) -> None:
    from taktstock import load_config, train

    write_package(workdir, "lossonly", {"steps": LOSS_ONLY, "callbacks": CALLBACKS})
    config = tiny_config(
        data={"source": "synthetic", "kwargs": {"n_samples": 200, "n_features": 8, "n_classes": 4}},
        train={
            "batch_size": 16,
            "val_every_n_steps": 1,
            "step_fn": "lossonly.steps:reconstruction_step",
            "callbacks": ["lossonly.callbacks:StopAtStep3"],
        },
        metrics={"monitor": "val/loss", "mode": "min"},
    )
    config["model"] = {"name": "torch.nn:Linear", "in_features": 8, "out_features": 8}  # any nn.Module by import path
    write_config(workdir / "exp.yaml", config)
    result = train(load_config(workdir / "exp.yaml"), run_dir=workdir / "run")
    assert result.steps == 3 and result.stop_reason == "callback"
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [1, 2, 3] and all(math.isfinite(r["val/loss"]) for r in val)
    assert not any("val/acc" in r for r in records)


def test_extension_mistakes_are_config_errors(workdir: Path) -> None:
    from taktstock import load_config, train

    write_package(
        workdir,
        "broken",
        {
            "code": """
            import torch
            from torch.utils.data import Dataset


            class DictItems(Dataset):
                def __len__(self):
                    return 10

                def __getitem__(self, i):
                    return {"x": torch.zeros(3), "y": 0}


            class NotAMetric:
                pass


            def two_tuple_step(model, batch, loss_fn):
                x, y = batch
                return loss_fn(model(x), y), model(x)
            """
        },
    )
    write_config(workdir / "exp.yaml", tiny_config())

    def config(*overrides: str):
        return load_config(workdir / "exp.yaml", list(overrides))

    with pytest.raises(ConfigError, match=r"plugins\[0\]: cannot import module 'nope'"):
        config("plugins=[nope]")
    with pytest.raises(ConfigError, match=r"plugins\[0\]: .* must be a module name"):
        config("plugins=['broken.code:DictItems']")
    with pytest.raises(ConfigError, match=r"unknown model 'tiny_net'.*plugins"):
        config("model.name=tiny_net")
    bad_model = tiny_config()
    bad_model["model"]["depth"] = 3
    with pytest.raises(ConfigError, match=r"bad_model.yaml:\d+: model.depth: mlp has no argument 'depth'"):
        load_config(write_config(workdir / "bad_model.yaml", bad_model))
    # Dict items are samples now (issue 14); one without the target says where the target goes.
    with pytest.raises(ConfigError, match=r"items of broken.code:DictItems are dicts without a 'labels' field"):
        train(config("data.source=broken.code:DictItems"), run_dir=workdir / "r1")
    with pytest.raises(ConfigError, match=r"metrics\.extra: broken\.code:NotAMetric is not a torchmetrics\.Metric"):
        train(config("metrics.extra=['broken.code:NotAMetric']"), run_dir=workdir / "r2")
    with pytest.raises(
        ConfigError, match=r"train.step_fn: a step must return the loss tensor or \(loss, outputs, targets\); got a tuple of 2"
    ):
        train(config("train.step_fn=broken.code:two_tuple_step"), run_dir=workdir / "r3")

    cli = run_cli("train", "exp.yaml", "plugins=[nope]", cwd=workdir)
    assert cli.returncode == 2 and cli.stderr.startswith("error: plugins[0]: cannot import module 'nope'") and "Traceback" not in cli.stderr


def test_dry_run_reports_config_model_sizes_and_batch_without_training(workdir: Path) -> None:
    from taktstock import load_config
    from taktstock.data.prepare import prepare
    from taktstock.models.registry import build_model

    write_config(workdir / "exp.yaml", tiny_config())
    out = run_cli("train", "exp.yaml", "train.batch_size=50", "--dry-run", cwd=workdir, check=True).stdout

    config = load_config(workdir / "exp.yaml", ["train.batch_size=50"])
    data = prepare(config)
    model = build_model("mlp", config.model.params(), data.input_shape, data.num_outputs)
    assert "# resolved config" in out and "batch_size: 50" in out
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in out
    for split in ("train", "val", "test"):
        assert f"{split}: {len(data.split(split).y)} samples" in out
    assert f"steps per epoch: {math.ceil(len(data.split('train').y) / 50)}" in out
    assert "batch: ((50, 1, 8, 8) float32, (50,) int64)" in out
    assert "outputs: (50, 10) float32" in out and "initial loss:" in out
    assert not (workdir / "experiments").exists()
