"""The contenders: taktstock through train(), hand-written PyTorch loops, Lightning and Accelerate.

All contenders train the same model on the same prepared arrays with the same optimizer (AdamW,
lr 1e-3), batch size and number of epochs; each returns (seconds of the training loop, samples).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Workload:
    name: str
    model: dict[str, Any]  # taktstock model section
    data_kwargs: dict[str, Any]  # synthetic source options
    batch_size: int
    epochs: int
    device: str
    workdir: Path
    precision: str = "32"
    channels_last: bool = False
    num_workers: int = 0
    deterministic: bool = True
    extra_train: dict[str, Any] = field(default_factory=dict)

    def config(self, in_memory: str, **train: Any) -> dict[str, Any]:
        """The taktstock experiment: no validation split (the hand-written loops do not validate), default checkpointing."""
        return {
            "experiment": {"name": f"bench-{self.name}", "output_dir": str(self.workdir / "runs")},
            "seed": 0,
            "data": {
                "source": "synthetic",
                "kwargs": self.data_kwargs,
                "val_fraction": 0.0,
                "test_fraction": 0.0,
                "normalize": "none",
                "cache_dir": str(self.workdir / "cache"),
                "num_workers": self.num_workers,
                "in_memory": in_memory,
                "on_device": in_memory == "always" and self.device == "cuda",
            },
            "model": self.model,
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},  # the same optimizer in every contender
            "train": {
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "device": self.device,
                "precision": self.precision,
                "channels_last": self.channels_last,
                "deterministic": self.deterministic,
                "callbacks": ["benchmarks.timing:FitTimer"],
            }
            | self.extra_train
            | train,
            "metrics": {"monitor": "train/loss"},  # no validation split: the epoch's training loss decides "best"
            "logging": {"tensorboard": False, "plots": False, "progress": "off"},
        }

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The prepared training arrays taktstock uses (so every contender sees identical data).

        Kept as a plain .npz next to the cache, so a hand-written contender in a fresh process (peak
        memory) loads them with numpy alone instead of importing taktstock's config and data modules."""
        import hashlib
        import json

        key = hashlib.sha256(json.dumps(self.data_kwargs, sort_keys=True).encode()).hexdigest()[:12]
        path = self.workdir / "arrays" / f"{self.name}-{key}.npz"
        if not path.exists():
            from taktstock.config.loader import validate
            from taktstock.data.prepare import prepare

            train = prepare(validate(self.config("never"), {}, "<benchmark>")).split("train")
            x, y = train.x, train.y
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=x, y=y)
            tmp.replace(path)
        with np.load(path) as z:
            return z["x"], z["y"]

    def build_model(self, x: np.ndarray, y: np.ndarray) -> nn.Module:
        from taktstock.models.registry import build_model

        params = {k: v for k, v in self.model.items() if k not in ("name", "init")}
        return build_model(self.model["name"], params, x.shape[1:], int(y.max()) + 1)


# -- taktstock ---------------------------------------------------------------------------------
def taktstock_run(w: Workload, in_memory: str, tag: str, defaults: bool = False, fused: bool | None = None) -> tuple[float, int]:
    """Loop rows: no periodic checkpoints, timed from the first to the last optimizer step. `defaults`:
    default checkpointing (checkpoint.every_n_minutes, the final save), timed to the end of Trainer.fit. `fused`:
    optim.fused (None: taktstock's default, the fused kernel where torch has one)."""
    from benchmarks.timing import MARKS
    from taktstock.config.loader import validate
    from taktstock.training.run import train as run_train

    raw = w.config(in_memory)
    if fused is not None:
        raw["optim"]["fused"] = fused
    if not defaults:
        raw["checkpoint"] = {"every_n_minutes": None, "every_n_steps": None, "every_epoch": False, "save_best": False}
    config = validate(raw, {}, "<benchmark>")
    run_dir = w.workdir / "runs" / f"{w.name}-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = run_train(config, run_dir=run_dir)
    n = _train_samples(w)
    shutil.rmtree(run_dir, ignore_errors=True)
    assert result.steps > 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return MARKS["end" if defaults else "last_step"] - MARKS["start"], n * w.epochs


def _train_samples(w: Workload) -> int:
    return int(w.data_kwargs["n_samples"])


# -- hand-written PyTorch ------------------------------------------------------------------------
class HandWritten:
    """The loop a competent PyTorch user writes: DataLoader (or in-memory indexing), AdamW, and on
    CUDA pinned memory, non_blocking copies, channels_last, bf16 autocast, fused AdamW, cudnn.benchmark.
    `fused` (default: on CUDA only, PyTorch's own default) selects the fused AdamW kernel."""

    def __init__(self, w: Workload, in_memory: bool, fused: bool | None = None) -> None:
        self.w, self.in_memory, self.fused = w, in_memory, fused
        self.x_np, self.y_np = w.arrays()
        self.device = torch.device(w.device)

    def __call__(self) -> tuple[float, int]:
        w, device = self.w, self.device
        torch.manual_seed(0)
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = not w.deterministic
        model = w.build_model(self.x_np, self.y_np).to(device)
        if w.channels_last and cuda:
            model = model.to(memory_format=torch.channels_last)
        fused = cuda if self.fused is None else self.fused
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, **({"fused": True} if fused else {}))
        loss_fn = nn.CrossEntropyLoss()
        x, y = torch.from_numpy(self.x_np), torch.from_numpy(self.y_np)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if w.precision == "bf16" else contextlib.nullcontext()
        if self.in_memory:
            if cuda:
                x, y = x.to(device), y.to(device)
            gen = torch.Generator().manual_seed(0)

            def batches(epoch: int) -> Any:
                perm = torch.randperm(len(y), generator=gen).to(x.device)
                for i in range(0, len(y), w.batch_size):
                    idx = perm[i : i + w.batch_size]
                    yield x[idx], y[idx]
        else:
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(x, y),
                batch_size=w.batch_size,
                shuffle=True,
                num_workers=w.num_workers,
                pin_memory=cuda,
                persistent_workers=w.num_workers > 0,
                generator=torch.Generator().manual_seed(0),
            )

            def batches(epoch: int) -> Any:
                return iter(loader)

        model.train()
        _sync(device)
        t0 = time.perf_counter()
        for epoch in range(w.epochs):
            for xb, yb in batches(epoch):
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if w.channels_last and cuda and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with autocast:
                    loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0, len(y) * w.epochs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- Lightning -----------------------------------------------------------------------------------
class LightningRun:
    def __init__(self, w: Workload) -> None:
        import lightning  # noqa: F401  (fails early when not installed)

        self.w = w
        self.x_np, self.y_np = w.arrays()

    def __call__(self) -> tuple[float, int]:
        import lightning as L

        w = self.w
        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        torch.manual_seed(0)
        net = w.build_model(self.x_np, self.y_np)
        marks: dict[str, float] = {}

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net, self.loss_fn = net, nn.CrossEntropyLoss()

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                return self.loss_fn(self.net(x), y)

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.0)

        class Timer(L.Callback):
            def on_train_start(self, trainer: Any, module: Any) -> None:
                marks["start"] = time.perf_counter()

            def on_train_end(self, trainer: Any, module: Any) -> None:
                marks["end"] = time.perf_counter()

        x, y = torch.from_numpy(self.x_np), torch.from_numpy(self.y_np)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=w.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer = L.Trainer(
                max_epochs=w.epochs,
                accelerator="gpu" if w.device == "cuda" else "cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                callbacks=[Timer()],
            )
            trainer.fit(Module(), loader)
        return marks["end"] - marks["start"], len(y) * w.epochs


# -- Accelerate ----------------------------------------------------------------------------------
class AccelerateRun:
    def __init__(self, w: Workload) -> None:
        import accelerate  # noqa: F401

        self.w = w
        self.x_np, self.y_np = w.arrays()

    def __call__(self) -> tuple[float, int]:
        from accelerate import Accelerator

        w = self.w
        torch.manual_seed(0)
        accelerator = Accelerator(cpu=w.device == "cpu")
        model = w.build_model(self.x_np, self.y_np)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        x, y = torch.from_numpy(self.x_np), torch.from_numpy(self.y_np)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=w.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        model, opt, loader = accelerator.prepare(model, opt, loader)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        t0 = time.perf_counter()
        for _ in range(w.epochs):
            for xb, yb in loader:
                loss = loss_fn(model(xb), yb)
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad(set_to_none=True)
        _sync(torch.device(w.device))
        elapsed = time.perf_counter() - t0
        accelerator.free_memory()
        return elapsed, len(y) * w.epochs
