"""Batched reads of user Dataset classes: every sample equals its read with torch's, Python's and NumPy's
global generators seeded by (seed, epoch, index), with any number of workers, through `__getitems__` and
`arrays()`, and after a SIGKILL + resume; the main process's own generators are left where they were."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config

USER_CODE = """
    import os
    import random

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset


    def _signals(n):
        g = np.random.default_rng(0)
        y = g.integers(0, 3, n)
        x = (np.sin(np.arange(16)[None, :] * (y[:, None] + 1) * 0.4) + g.normal(0, 0.2, (n, 16))).astype(np.float32)
        return x[:, None, :], y


    class AllGenerators(Dataset):
        \"\"\"Each read draws from torch's, Python's and NumPy's global generators (and numpy only on odd items).\"\"\"

        def __init__(self, n: int = 120):
            self.x, self.y = _signals(n)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            x = torch.from_numpy(self.x[i]) + 0.05 * torch.randn(1, 16)
            x = torch.roll(x, random.randint(-2, 2), dims=-1)
            if i % 2:
                x = x * np.float32(np.random.uniform(0.9, 1.1))
            return x, int(self.y[i])


    class Counting(Dataset):
        \"\"\"No randomness; every item read is counted (class attribute), for tests that need to see reads.\"\"\"

        reads = 0

        def __init__(self, n: int = 120):
            self.x, self.y = _signals(n)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            type(self).reads += 1
            return self.x[i], np.int64(self.y[i])


    class Rows(Counting):
        \"\"\"Items are rows of two arrays, and says so: taktstock indexes them instead of reading items.\"\"\"

        def arrays(self):
            return self.x, self.y


    class LyingRows(Counting):
        def arrays(self):
            return self.x * 2, self.y


    class BatchOfItems(Counting):
        \"\"\"PyTorch's batched-fetch protocol: `__getitems__` returns a whole (inputs, targets) batch.\"\"\"

        batch_calls = 0

        def __getitems__(self, indices):
            type(self).batch_calls += 1
            return torch.from_numpy(self.x[indices]), torch.from_numpy(self.y[indices])


    class RandomListOfItems(AllGenerators):
        \"\"\"`__getitems__` returning a list of items that draw random numbers: read again per item, seeded.\"\"\"

        def __getitems__(self, indices):
            return [self[i] for i in indices]


    class Fields(Counting):
        \"\"\"Dict items with a text label: stacked field by field, the label mapped to its class id.\"\"\"

        def __getitem__(self, i):
            return {"signal": self.x[i], "step": i % 5, "labels": "abc"[int(self.y[i])]}


    class Net(nn.Module):
        def __init__(self, input_shape, num_outputs):
            super().__init__()
            self.body = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(8 * 16, num_outputs))

        def forward(self, x):
            return self.body(x)
"""


@pytest.fixture
def usercode(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = workdir / "readcode"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "code.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(workdir))
    return workdir


def _prepared(workdir: Path, source: str, **data: Any) -> tuple[Any, Any]:
    from taktstock.config.loader import load_config
    from taktstock.data.prepare import prepare

    raw = tiny_config(data={"source": source, "stratify": False, "normalize": "none"} | data, train={"batch_size": 16})
    write_config(workdir / "exp.yaml", raw)
    config = load_config(workdir / "exp.yaml", [])
    return config, prepare(config)


def _reference(split: Any, key: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample as the contract defines it: the item read with all three generators seeded by its own seed."""
    from taktstock.data.dataset import EVAL_STREAM, sample_seed, to_tensor

    epoch, i = key if isinstance(key, tuple) else (None, key)
    j = int(split.indices[i])
    value = sample_seed(split.seed, epoch, j) if epoch is not None else sample_seed(split.seed, 0, j, EVAL_STREAM)
    torch.default_generator.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    x, y = split.dataset[j]
    return to_tensor(x), torch.as_tensor(y)


def _epoch(split: Any, config: Any, epoch: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from taktstock.data.loaders import build_train_batches

    config = config.model_copy(update={"data": config.data.model_copy(update={"num_workers": workers})})
    return list(build_train_batches(split, config, torch.device("cpu")).epoch(epoch))


def _rng_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _same_rng(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[2], b[2], strict=True))


def test_every_sample_equals_its_read_with_all_three_generators_seeded(usercode: Path) -> None:
    from taktstock.data.loaders import EpochBatchSampler, GetBatchBatches

    config, data = _prepared(usercode, "readcode.code:AllGenerators")
    split = data.split("train")
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    before = _rng_states()
    main = _epoch(split, config, 1, workers=0)
    after = _rng_states()
    assert _same_rng(before, after)  # the training process's own streams are untouched
    assert split.reads.used == {"torch", "python", "numpy"}  # the reads were seen to draw from all three
    order = EpochBatchSampler(len(split), 16, config.seed).global_batches(1)
    for batch, idx in zip(main, order, strict=True):
        for k, i in enumerate(idx.tolist()):
            x, y = _reference(split, (1, i))
            assert torch.equal(batch[0][k], x) and int(batch[1][k]) == int(y)
    # 2 and 3 workers (each learns which generators the dataset uses by itself) give the same batches.
    for workers in (2, 3):
        other = _epoch(split, config, 1, workers)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(main, other, strict=True))
    # Evaluation reads are seeded apart from training reads, and repeat.
    x_eval, _ = split[7]
    assert torch.equal(x_eval, _reference(split, 7)[0]) and not torch.equal(x_eval, _reference(split, (1, 7))[0])
    # With no workers the loop reads whole batches in its own process (no DataLoader).
    from taktstock.data.loaders import build_train_batches

    assert isinstance(build_train_batches(split, config, torch.device("cpu")), GetBatchBatches)


def test_a_dataset_that_draws_nothing_is_read_without_seeding(usercode: Path) -> None:
    config, data = _prepared(usercode, "readcode.code:Counting")
    split = data.split("train")
    before = _rng_states()
    batches = _epoch(split, config, 0, workers=0)
    assert split.reads.used == set() and _same_rng(before, _rng_states())
    reference = [_reference(split, (0, i)) for i in range(len(split))]
    got = {}
    from taktstock.data.loaders import EpochBatchSampler

    for batch, idx in zip(batches, EpochBatchSampler(len(split), 16, config.seed).global_batches(0), strict=True):
        got |= {i: (batch[0][k], batch[1][k]) for k, i in enumerate(idx.tolist())}
    assert all(torch.equal(got[i][0], reference[i][0]) and int(got[i][1]) == int(reference[i][1]) for i in range(len(split)))


def test_getitems_batches_are_read_in_one_call_and_random_ones_fall_back_to_seeded_items(usercode: Path) -> None:
    import importlib

    code = importlib.import_module("readcode.code")
    config, data = _prepared(usercode, "readcode.code:BatchOfItems")
    split = data.split("train")
    code.BatchOfItems.reads = code.BatchOfItems.batch_calls = 0
    batches = _epoch(split, config, 0, workers=0)
    assert code.BatchOfItems.reads == 0 and code.BatchOfItems.batch_calls == len(batches)  # no per-item read
    _, plain = _prepared(usercode, "readcode.code:Counting")
    same = _epoch(plain.split("train"), config, 0, workers=0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, same, strict=True))

    config, data = _prepared(usercode, "readcode.code:RandomListOfItems")
    random_split = data.split("train")
    _, reference = _prepared(usercode, "readcode.code:AllGenerators")
    for workers in (0, 2):
        got = _epoch(random_split, config, 2, workers)
        want = _epoch(reference.split("train"), config, 2, 0)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want, strict=True))


def test_arrays_rows_are_indexed_not_read_and_a_mismatch_is_a_config_error(usercode: Path) -> None:
    import importlib

    from taktstock.errors import ConfigError

    code = importlib.import_module("readcode.code")
    config, data = _prepared(usercode, "readcode.code:Rows", augment={"noise_std": 0.1})
    split = data.split("train")
    assert split.rows is not None
    code.Rows.reads = 0
    batches = _epoch(split, config, 0, workers=0)
    assert code.Rows.reads == 0  # indexed from arrays(), no item read
    _, plain = _prepared(usercode, "readcode.code:Counting", augment={"noise_std": 0.1})
    want = _epoch(plain.split("train"), config, 0, workers=0)  # item reads, data.augment applied per batch as well
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, want, strict=True))
    with pytest.raises(ConfigError, match=r"item 0 of readcode.code:LyingRows differs from row 0 of its arrays\(\)"):
        _prepared(usercode, "readcode.code:LyingRows")


def test_dict_items_are_stacked_field_by_field_as_default_collate_would(usercode: Path) -> None:
    from torch.utils.data import default_collate

    _, data = _prepared(usercode, "readcode.code:Fields")
    split = data.split("train")
    keys = [(3, i) for i in range(0, len(split), 3)]
    batch = split.collate(split.__getitems__(keys))
    want = default_collate(split.samples(keys))  # one converted sample at a time, then PyTorch's collate
    assert batch.keys() == want.keys() == {"signal", "step", "labels"}
    assert all(torch.equal(batch[k], want[k]) and batch[k].dtype == want[k].dtype for k in batch)
    assert batch["labels"].dtype == torch.int64 and set(batch["labels"].tolist()) <= {0, 1, 2}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("source", ["AllGenerators", "RandomListOfItems"])
def test_random_user_dataset_with_2_workers_resumes_bit_identically_after_sigkill(usercode: Path, source: str) -> None:
    """Per-item `__getitem__` and a `__getitems__` batch, both drawing from all three generators."""
    import signal

    from tests.resume_harness import assert_resumed_from, newest_valid_checkpoint, reference_server, shared_server, wait_until

    raw = tiny_config(
        data={"source": f"readcode.code:{source}", "kwargs": {"n": 400}, "num_workers": 2, "normalize": "none", "stratify": False},
        train={"epochs": 3, "batch_size": 16, "log_every_n_steps": 2},
        checkpoint={"every_n_steps": 6},
        model="readcode.code:Net",
        logging={"tensorboard": False, "plots": False, "progress": "off"},
    )
    raw["model"] = {"name": raw["model"]}
    write_config(usercode / "exp.yaml", raw)
    ref = reference_server()  # a fresh interpreter: the killed side forks from the pre-imported server
    try:
        assert ref.run(["train", "exp.yaml", "--run-dir", "ref"], usercode, usercode / "ref.log", timeout=300) == 0, (
            usercode / "ref.log"
        ).read_text()
    finally:
        ref.close()
    server = shared_server()
    child = server.start(["train", "exp.yaml", "--run-dir", "run"], usercode, usercode / "killed.log")
    ckpts = usercode / "run" / "checkpoints"
    # Kill in the second epoch, after at least three periodic checkpoints (a later one to resume from).
    assert wait_until(lambda: len(list(ckpts.glob("step-*.json"))) >= 3, child, 200), child.output()
    child.kill_group()
    assert child.wait(60) == -signal.SIGKILL
    at_kill = newest_valid_checkpoint(usercode / "run")
    assert at_kill is not None
    # The same command again (as a scheduler relaunches it) continues the run from the newest checkpoint.
    resumed = server.start(["train", "exp.yaml", "--run-dir", "run"], usercode, usercode / "resumed.log")
    assert resumed.wait(300) == 0, resumed.output()
    assert_resumed_from(resumed.output(), at_kill)
    assert (usercode / "run" / "model.safetensors").read_bytes() == (usercode / "ref" / "model.safetensors").read_bytes()
    assert (usercode / "run" / "metrics.jsonl").read_bytes() == (usercode / "ref" / "metrics.jsonl").read_bytes()


def test_a_batched_user_dataset_trains_through_the_cli(usercode: Path) -> None:
    raw = tiny_config(data={"source": "readcode.code:BatchOfItems", "normalize": "global"}, train={"epochs": 2, "batch_size": 16})
    raw["model"] = {"name": "readcode.code:Net"}
    write_config(usercode / "exp.yaml", raw)
    run_cli("train", "exp.yaml", "--run-dir", "run", "--evaluate", cwd=usercode, check=True)
    assert (usercode / "run" / "eval" / "metrics.json").is_file()


def test_per_batch_seeds_equal_the_per_sample_seeds() -> None:
    from taktstock.data.dataset import EVAL_STREAM, TRAIN_STREAM, sample_seed, sample_seeds

    rng = np.random.default_rng(0)
    for seed, epoch in ((0, 0), (1, 3), (2**40 + 7, 999), (2**63 + 5, 2**33)):
        idx = rng.integers(0, 2**40, 64)
        for stream in (TRAIN_STREAM, EVAL_STREAM):
            assert sample_seeds(seed, epoch, idx, stream) == [sample_seed(seed, epoch, int(i), stream) for i in idx]
