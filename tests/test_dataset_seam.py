"""The dataset seam: user Dataset classes are read lazily in the workers, dict and mixed samples train
end to end, per-sample random transforms do not depend on the worker count, token ids reach the
model as int64, and padding (-100) never counts in the loss, accuracy or tallies."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config

USER_CODE = """
    import os
    from pathlib import Path

    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import Dataset


    class CountingDigits(Dataset):
        \"\"\"Dict samples; every read is logged per process, so a test can see who read what.\"\"\"

        def __init__(self, log_dir: str, n: int = 400):
            bunch = load_digits()
            self.x, self.targets = bunch.data[:n].astype(np.float64) / 16, bunch.target[:n].tolist()
            self.classes = [str(c) for c in range(10)]
            self.log_dir = Path(log_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / "main").write_text(str(os.getpid()))

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            with (self.log_dir / f"reads-{os.getpid()}").open("a") as f:
                f.write(f"{i}\\n")
            # float64 features become float32; int32 token ids must arrive as int64
            tokens = (self.x[i][:8] * 15).astype(np.int32)
            return {"pixels": self.x[i], "tokens": tokens, "labels": self.targets[i]}


    class DictNet(nn.Module):
        def __init__(self, input_shape, num_outputs):
            super().__init__()
            self.embed = nn.Embedding(16, 4)
            self.head = nn.Linear(input_shape[0] + 8 * 4, num_outputs)

        def forward(self, pixels, tokens):
            if tokens.dtype != torch.int64 or pixels.dtype != torch.float32:
                raise TypeError(f"got pixels {pixels.dtype}, tokens {tokens.dtype}")
            return self.head(torch.cat([pixels, self.embed(tokens).flatten(1)], dim=1))


    class MixedDigits(Dataset):
        \"\"\"Issue 18 finding 5: items ({"image": ..., "meta": ...}, y).\"\"\"

        def __init__(self, n: int = 300):
            bunch = load_digits()
            self.images, self.y = bunch.images[:n].astype(np.float32) / 16, bunch.target[:n]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"image": self.images[i][None], "meta": np.array([i % 2], np.int64)}, self.y[i]


    class MixedNet(nn.Module):
        def __init__(self, input_shape, num_outputs):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
            self.meta = nn.Embedding(2, 4)
            self.head = nn.Linear(36, num_outputs)

        def forward(self, inputs):
            return self.head(torch.cat([self.body(inputs["image"]), self.meta(inputs["meta"][:, 0])], dim=1))


    class NoisyFlips(Dataset):
        \"\"\"A per-sample random transform drawing from the global torch RNG (as torchvision's transforms do).\"\"\"

        def __init__(self, n: int = 60):
            from torchvision.transforms import v2

            bunch = load_digits()
            self.images, self.targets = torch.from_numpy(bunch.images[:n]).float()[:, None] / 16, bunch.target[:n].tolist()
            self.transform = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(8, padding=1)])

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            image = self.transform(self.images[i])
            return image + 0.1 * torch.randn(image.shape), self.targets[i]


    class PlainImages(Dataset):
        def __init__(self, n: int = 120):
            bunch = load_digits()
            self.images, self.targets = bunch.images[:n, None].astype(np.float32), bunch.target[:n].tolist()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.images[i], self.targets[i]


    class Sequences(Dataset):
        \"\"\"Language-modelling style dict samples: padded token ids, labels -100 on padding.\"\"\"

        num_outputs = 11

        def __init__(self, n: int = 200, length: int = 12):
            g = np.random.default_rng(0)
            self.items = []
            for _ in range(n):
                real = int(g.integers(3, length + 1))
                ids = np.zeros(length, np.int64)
                ids[:real] = np.arange(real) % 10 + 1  # next token = current + 1: learnable
                labels = np.full(length, -100, np.int64)
                labels[: real - 1] = ids[1:real]
                self.items.append({"input_ids": ids, "labels": labels})

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]


    class TinyLM(nn.Module):
        def __init__(self, input_shape, num_outputs):
            super().__init__()
            self.embed = nn.Embedding(num_outputs, 16)
            self.head = nn.Linear(16, num_outputs)

        def forward(self, input_ids):
            assert input_ids.dtype == torch.int64
            return {"logits": self.head(self.embed(input_ids))}  # a Hugging Face style output
"""


@pytest.fixture
def usercode(workdir: Path) -> Path:
    pkg = workdir / "usercode"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "code.py").write_text(textwrap.dedent(USER_CODE))
    return workdir


def _reads(log_dir: Path) -> tuple[int, int]:
    """(items read by the main process, items read by any other process)."""
    main = (log_dir / "main").read_text()
    counts = {p.name.removeprefix("reads-"): len(p.read_text().splitlines()) for p in log_dir.glob("reads-*")}
    return counts.pop(main, 0), sum(counts.values())


def test_dict_sample_user_dataset_is_read_in_the_workers_not_the_main_process(usercode: Path) -> None:
    config = tiny_config(
        data={"source": "usercode.code:CountingDigits", "kwargs": {"log_dir": "reads"}, "num_workers": 2, "normalize": "none"},
        train={"epochs": 2, "batch_size": 32, "log_every_n_steps": 5},
        optim={"name": "adamw", "lr": 0.03},
    )
    config["model"] = {"name": "usercode.code:DictNet"}
    write_config(usercode / "exp.yaml", config)
    dry = run_cli("train", "exp.yaml", "--dry-run", "data.kwargs.log_dir=dry", cwd=usercode, check=True).stdout
    assert "batch: {pixels: (32, 64) float32, tokens: (32, 8) int64, labels: (32,) int64}" in dry

    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=usercode, check=True)
    main, workers = _reads(usercode / "reads")
    # The main process reads one probe item (the sample spec); labels come from `targets`.
    assert main == 1, f"main process read {main} items"
    n_train = 400 - 2 * 40  # val and test fractions 0.1
    assert workers >= 2 * n_train  # two epochs of training plus validation, all in workers
    records = [json.loads(line) for line in (usercode / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["val/acc"] for r in records if "val/acc" in r) > 0.8

    run_cli("evaluate", "run", cwd=usercode, check=True)
    report = json.loads((usercode / "run" / "eval" / "report.json").read_text())
    assert sorted(report) == [str(c) for c in range(10)]
    assert _reads(usercode / "reads")[0] == 1  # evaluate's own probe; the test split is read in workers


def test_mixed_dict_items_train_and_evaluate(usercode: Path) -> None:
    config = tiny_config(
        data={"source": "usercode.code:MixedDigits"},
        train={"epochs": 2, "batch_size": 32, "log_every_n_steps": 5},
        optim={"name": "adamw", "lr": 0.01},
    )
    config["model"] = {"name": "usercode.code:MixedNet"}
    write_config(usercode / "exp.yaml", config)
    dry = run_cli("train", "exp.yaml", "--dry-run", cwd=usercode, check=True).stdout
    assert "batch: ({image: (32, 1, 8, 8) float32, meta: (32, 1) int64}, (32,) int64)" in dry
    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=usercode, check=True)
    run_cli("evaluate", "run", cwd=usercode, check=True)
    assert json.loads((usercode / "run" / "eval" / "metrics.json").read_text())["metrics"]["test/acc"] > 0.7


def test_random_transforms_give_the_same_batches_with_0_and_2_workers_and_after_a_resume(usercode: Path) -> None:
    from taktstock.config.loader import load_config
    from taktstock.data.loaders import DataLoaderBatches, build_train_batches
    from taktstock.data.prepare import prepare

    raw = tiny_config(data={"source": "usercode.code:NoisyFlips", "in_memory": "never", "stratify": False}, train={"batch_size": 8})
    write_config(usercode / "exp.yaml", raw)
    epochs: dict[int, list] = {}
    for workers in (0, 2):
        config = load_config(usercode / "exp.yaml", [f"data.num_workers={workers}"])
        batches = build_train_batches(prepare(config).split("train"), config, torch.device("cpu"))
        assert isinstance(batches, DataLoaderBatches)
        rng_before = torch.get_rng_state()
        epochs[workers] = [list(batches.epoch(e)) for e in (0, 1)]
        resumed = list(batches.epoch(1, start_batch=2))
        # Reading samples in the main process leaves the training RNG (dropout) where it was.
        assert torch.equal(torch.get_rng_state(), rng_before)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs[workers][1][2:], resumed, strict=True))
    for a, b in zip(epochs[0], epochs[2], strict=True):
        assert len(a) == len(b) > 3
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    # The transform is really random: a sample differs between epochs, and evaluation reads repeat.
    split = prepare(config).split("train")
    assert not torch.equal(split[(0, 5)][0], split[(1, 5)][0]) and torch.equal(split[(1, 5)][0], split[(1, 5)][0])
    assert torch.equal(split[5][0], split[5][0])


def test_data_augment_applies_to_the_training_split_of_a_user_dataset_as_to_arrays(usercode: Path) -> None:
    from taktstock.config.loader import load_config
    from taktstock.data.datasets import ArraySplit
    from taktstock.data.prepare import prepare

    raw = tiny_config(data={"source": "usercode.code:PlainImages", "augment": {"shift": 1, "hflip": True}, "normalize": "global"})
    config = load_config(write_config(usercode / "exp.yaml", raw))
    data = prepare(config)
    train, val = data.split("train"), data.split("val")
    plain = torch.stack([train[i][0] for i in range(len(train))])
    arrays = ArraySplit(plain.numpy(), torch.stack([train[i][1] for i in range(len(train))]).numpy(), config.seed, config.data.augment)
    for i in range(len(train)):
        assert torch.equal(train[(3, i)][0], arrays[(3, i)][0])
    assert not torch.equal(torch.stack([train[(3, i)][0] for i in range(len(train))]), plain)
    assert torch.equal(val[(3, 0)][0], val[0][0])  # validation is never augmented


def test_padding_labels_count_in_no_loss_accuracy_or_tally() -> None:
    from taktstock.metrics.collection import real_positions
    from taktstock.training.step import count_of, default_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 5), torch.nn.Linear(5, 7))
    ids = torch.randint(0, 7, (3, 6))
    labels = ids.roll(-1, 1)
    labels[0, 4:] = -100
    labels[2, 1:] = -100
    loss, out, target = default_step(lambda input_ids: model(input_ids), {"input_ids": ids, "labels": labels}, torch.nn.CrossEntropyLoss())
    keep = labels != -100
    manual = torch.nn.functional.cross_entropy(out[keep], labels[keep])
    assert torch.equal(loss, manual)
    assert count_of({"input_ids": ids, "labels": labels}, out, target) == int(keep.sum()) == 18 - 2 - 5
    flat_out, flat_target = real_positions(out, target)
    assert flat_out.shape == (11, 7) and torch.equal(flat_target, labels[keep])


def test_language_modelling_dict_batches_train_through_the_cli(usercode: Path) -> None:
    config = tiny_config(
        data={"source": "usercode.code:Sequences", "normalize": "none"},
        train={"epochs": 3, "batch_size": 16, "log_every_n_steps": 5},
        optim={"name": "adamw", "lr": 0.05},
    )
    config["model"] = {"name": "usercode.code:TinyLM"}
    write_config(usercode / "exp.yaml", config)
    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=usercode, check=True)
    records = [json.loads(line) for line in (usercode / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/acc" in r]
    # Next-token prediction of a counting sequence is learnable; padding would drag accuracy down.
    assert val[-1]["val/acc"] > 0.9 and all(0 <= r["train/acc"] <= 1 for r in records if "train/acc" in r)
