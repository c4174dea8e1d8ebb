"""A user Dataset whose constructor takes `split` is built once per split: it can augment only its
training items, or serve its own train/val/test items (`data.split_by: dataset`)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_cli, tiny_config, write_config

USER_CODE = """
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import Dataset


    class NoisyInTrain(Dataset):
        \"\"\"Digits with Gaussian noise on the training items only (an augmentation).\"\"\"

        def __init__(self, split: str, noise: float = 3.0, n: int = 300):
            bunch = load_digits()
            self.x, self.targets = bunch.data[:n].astype(np.float32) / 16, bunch.target[:n].tolist()
            self.noise = noise if split == "train" else 0.0

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            x = torch.from_numpy(self.x[i])
            return (x + self.noise * torch.randn(x.shape) if self.noise else x), self.targets[i]


    class OwnSplits(Dataset):
        \"\"\"Each split reads its own items, as a dataset of train/val/test files does.\"\"\"

        ranges = {"train": (0, 200), "val": (200, 250), "test": (250, 320)}

        def __init__(self, split: str):
            start, stop = self.ranges[split]
            bunch = load_digits()
            self.x, self.targets = bunch.data[start:stop].astype(np.float32), bunch.target[start:stop].tolist()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.x[i], self.targets[i]


    class Plain(OwnSplits):
        def __init__(self):
            super().__init__("train")
"""


def _forget_usercode() -> None:
    """Other tests import their own `usercode` package in this process; a cached one would shadow this one."""
    for name in [m for m in sys.modules if m == "usercode" or m.startswith("usercode.")]:
        del sys.modules[name]


@pytest.fixture
def usercode(workdir: Path) -> Iterator[Path]:
    pkg = workdir / "usercode"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "code.py").write_text(textwrap.dedent(USER_CODE))
    _forget_usercode()
    yield workdir
    _forget_usercode()


def _test_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "eval" / "metrics.json").read_text())["metrics"]


def test_augmentation_for_split_train_only_leaves_evaluation_noise_free(usercode: Path) -> None:
    config = tiny_config(
        data={"source": "usercode.code:NoisyInTrain", "kwargs": {"noise": 3.0}, "normalize": "none"},
        train={"epochs": 1, "batch_size": 32, "log_every_n_steps": 50},
    )
    write_config(usercode / "exp.yaml", config)
    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=usercode, check=True)
    run_cli("evaluate", "run", cwd=usercode, check=True)
    noisy_training = _test_metrics(usercode / "run")
    # The same weights evaluated with the noise switched off everywhere: what the test split must have seen.
    saved = yaml.safe_load((usercode / "run" / "config.yaml").read_text())
    assert saved["data"]["kwargs"] == {"noise": 3.0}  # `split` is taktstock's, not a config key
    saved["data"]["kwargs"]["noise"] = 0.0
    (usercode / "run" / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    run_cli("evaluate", "run", cwd=usercode, check=True)
    assert _test_metrics(usercode / "run") == noisy_training


def test_a_dataset_with_its_own_splits_needs_split_by_dataset_and_is_used_whole(usercode: Path) -> None:
    from taktstock.config.loader import load_config
    from taktstock.data.prepare import prepare
    from taktstock.errors import ConfigError

    config = tiny_config(data={"source": "usercode.code:OwnSplits", "normalize": "none"})
    write_config(usercode / "exp.yaml", config)
    # Splits of different sizes cannot be split by fractions: refused, naming the key to set.
    proc = run_cli("train", "exp.yaml", "--dry-run", cwd=usercode)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.split_by: usercode.code:OwnSplits(split=...) has 200 train, 50 val, 70 test items" in proc.stderr

    data = prepare(load_config(usercode / "exp.yaml", ["data.split_by=dataset"]))
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [200, 50, 70]  # the fractions do not apply
    test = data.split("test")
    assert torch.equal(test[3][0], torch.from_numpy(test.dataset.x[3])) and test.dataset.ranges["test"] == (250, 320)
    assert data.num_outputs == 10

    with pytest.raises(ConfigError, match=r"data\.split_by: 'dataset' is for a user Dataset class"):
        load_config(write_config(usercode / "digits.yaml", tiny_config(data={"source": "digits", "split_by": "dataset"})))
    with pytest.raises(ConfigError, match=r"data\.split_by: 'dataset' needs a data\.source whose constructor takes a `split`"):
        prepare(load_config(usercode / "exp.yaml", ["data.split_by=dataset", "data.source=usercode.code:Plain"]))
