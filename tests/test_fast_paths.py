"""The fast paths change speed, never results: in-memory batches equal DataLoader batches, compiled
runs write checkpoints a plain model loads (and the reverse), and no per-step host synchronisation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from taktstock.config.loader import validate
from taktstock.data.datasets import ArraySplit
from taktstock.data.loaders import DataLoaderBatches, InMemoryBatches, build_train_batches
from tests.conftest import tiny_config


def _config(in_memory: str, num_workers: int, augment: dict) -> object:
    raw = tiny_config(data={"source": "digits", "in_memory": in_memory, "num_workers": num_workers, "augment": augment})
    raw["train"] = raw["train"] | {"batch_size": 8}
    return validate(raw, {}, "<test>")


def _images(n: int = 45) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def _batches(x: np.ndarray, y: np.ndarray, cfg: object, rank: int = 0, world_size: int = 1) -> object:
    """The training batches of arrays as a prepared training split (with the config's augmentation)."""
    return build_train_batches(ArraySplit(x, y, cfg.seed, cfg.data.augment), cfg, torch.device("cpu"), rank, world_size)


def _epoch(batches: object, epoch: int, start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches.epoch(epoch, start))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("augment", [{}, {"shift": 2, "hflip": True, "noise_std": 0.1}], ids=["plain", "augmented"])
def test_in_memory_batches_equal_dataloader_batches(num_workers: int, augment: dict) -> None:
    x, y = _images()
    for world_size in (1, 2):
        for rank in range(world_size):
            dl = _batches(x, y, _config("never", num_workers, augment), rank, world_size)
            mem = _batches(x, y, _config("always", num_workers, augment), rank, world_size)
            assert isinstance(dl, DataLoaderBatches) and isinstance(mem, InMemoryBatches)
            assert len(dl) == len(mem) > 2
            for epoch, start in ((0, 0), (1, 0), (1, 3), (2, len(mem) - 1)):  # start > 0: a resumed epoch
                a, b = _epoch(dl, epoch, start), _epoch(mem, epoch, start)
                assert len(a) == len(b) == len(mem) - start
                for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_world_size_2_shards_partition_the_single_process_batches() -> None:
    x, y = _images()
    cfg = _config("always", 0, {"shift": 1, "hflip": True})
    single = _epoch(_batches(x, y, cfg), 1, 0)
    ranks = [_epoch(_batches(x, y, cfg, r, 2), 1, 0) for r in range(2)]
    for i, (xs, ys) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), xs)
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), ys)


def test_augmentation_differs_between_epochs_but_repeats_within_an_epoch() -> None:
    x, y = _images()
    mem = _batches(x, y, _config("always", 0, {"shift": 2, "hflip": True}))
    first, again, other = _epoch(mem, 0, 0), _epoch(mem, 0, 0), _epoch(mem, 1, 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_steady_state_steps_do_not_synchronise_with_the_host(monkeypatch: pytest.MonkeyPatch, workdir) -> None:
    """Between logging intervals taktstock never converts a tensor to a Python value (.item/bool/int/float),
    which on CUDA would wait for the device. A CPU proxy for torch.cuda.set_sync_debug_mode("error"),
    which benchmarks/gpu_check.sh runs on a GPU."""
    from taktstock.training import trainer as trainer_mod
    from taktstock.training.run import train

    conversions: list[int] = []
    step = {"n": 0}
    for name in ("item", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, **k):
            # Only taktstock's own conversions: torch.optim reads its CPU-resident step counters, never device memory.
            if "taktstock" in Path(sys._getframe(1).f_code.co_filename).parts:
                conversions.append(step["n"])
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)

    class Counter:
        def on_step_end(self, trainer) -> None:
            step["n"] = trainer.state.step

    monkeypatch.setattr(
        trainer_mod.Trainer, "_callback", lambda self, hook, **kw: Counter().on_step_end(self) if hook == "on_step_end" else None
    )
    raw = tiny_config(train={"epochs": 1, "batch_size": 64, "log_every_n_steps": 5, "max_steps": 12})
    raw["checkpoint"] = {"every_n_steps": None, "every_epoch": False}
    raw["data"] = raw["data"] | {"val_fraction": 0.0, "test_fraction": 0.15}
    raw["metrics"] = {"monitor": "train/loss", "mode": "min"}  # no validation split to monitor
    train(validate(raw, {}, "<test>"), run_dir=workdir / "run")
    # Conversions happen only at logging steps (5, 10) and at the end (12); never in the steps between.
    assert conversions, "the spy saw nothing: the test would pass vacuously"
    assert set(conversions) <= {5, 10, 12}, sorted(set(conversions))


def _compile_config(compile: bool) -> dict:
    raw = tiny_config(train={"epochs": 1, "batch_size": 64, "max_steps": 2, "compile": compile, "log_every_n_steps": 1})
    raw["data"] = raw["data"] | {"val_fraction": 0.0}  # no eval pass: one compiled graph, not two
    raw["metrics"] = {"monitor": "train/loss"}
    raw["checkpoint"] = {"every_n_steps": 1}
    return raw


def _plain_model_loads(state: dict) -> None:
    from taktstock.models.registry import build_model

    assert not any("_orig_mod" in k or k.startswith("module.") for k in state)
    model = build_model("mlp", {"hidden": [32], "dropout": 0.1}, (1, 8, 8), 10)
    model.load_state_dict(state)  # strict: every key present, none extra


@pytest.mark.slow  # torch.compile (inductor) builds C++ kernels on CPU: one compile, ~20-40 s
def test_checkpoints_load_with_or_without_torch_compile(workdir) -> None:
    from safetensors.torch import load_file

    from taktstock.checkpoint.manager import load_checkpoint
    from taktstock.training.run import train

    # plain run -> resumed with train.compile=true (a config change, hence force) -> resumed plain again
    run = train(validate(_compile_config(False), {}, "<test>"), run_dir=workdir / "run").run_dir
    assert train(overrides=["train.compile=true", "train.max_steps=4"], resume=run, force=True).steps == 4
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["loop"]["step"] == 4
    _plain_model_loads(ckpt["model"])  # written by the compiled run
    _plain_model_loads(load_file(str(run / "model.safetensors")))
    assert train(overrides=["train.compile=false", "train.max_steps=5"], resume=run, force=True).steps == 5


def _ckpt_config(async_write: bool) -> dict:
    raw = tiny_config(train={"epochs": 1, "batch_size": 64, "log_every_n_steps": 5})
    raw["checkpoint"] = {"every_n_steps": 4, "keep_last": 10, "async_write": async_write}
    return raw


def test_async_checkpoint_files_are_byte_identical_to_synchronous_ones(workdir) -> None:
    from taktstock.training.run import train

    runs = {mode: train(validate(_ckpt_config(mode), {}, "<test>"), run_dir=workdir / str(mode)).run_dir for mode in (False, True)}
    names = sorted(p.name for p in (runs[False] / "checkpoints").iterdir())
    assert "best.pt" in names and "last.pt" in names and sum(n.startswith("step-") for n in names) >= 4
    assert names == sorted(p.name for p in (runs[True] / "checkpoints").iterdir())
    for name in names:
        assert (runs[False] / "checkpoints" / name).read_bytes() == (runs[True] / "checkpoints" / name).read_bytes(), name


def test_async_checkpoint_write_error_aborts_the_run_and_keeps_the_previous_checkpoint(workdir, monkeypatch) -> None:
    from taktstock.checkpoint import manager
    from taktstock.errors import TrainingAborted
    from taktstock.training.run import train

    original = manager.atomic_write_bytes

    def full_disk(path, data, **kwargs):
        if path.name == "step-00000008.pt":
            raise OSError(28, "No space left on device")
        return original(path, data, **kwargs)

    monkeypatch.setattr(manager, "atomic_write_bytes", full_disk)
    with pytest.raises(TrainingAborted, match=r"No space left on device.*step-8.*intact: .*step-00000004\.pt"):
        train(validate(_ckpt_config(True), {}, "<test>"), run_dir=workdir / "run")
    assert not (workdir / "run" / "checkpoints" / "step-00000008.pt").exists()
