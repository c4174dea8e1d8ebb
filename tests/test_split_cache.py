"""Split indices are memoised by labels and split settings: user Dataset runs (whose items are not cached) are split
once, and evaluate/predict of such a run do not import scikit-learn (~2 s) to split them again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from taktstock.config.schema import Config
from taktstock.data.prepare import _split_indices, memoised_split
from tests.conftest import cli_env


def _config(cache: Path, **data: object) -> Config:
    return Config.model_validate({"seed": 7, "data": {"cache_dir": str(cache), "val_fraction": 0.2, "test_fraction": 0.1} | data})


def test_the_memoised_split_is_the_computed_one_and_follows_labels_and_settings(tmp_path: Path) -> None:
    y = np.random.default_rng(0).integers(0, 4, 300)
    config = _config(tmp_path)
    first = memoised_split(config, y)
    (memo,) = (tmp_path / "splits").iterdir()
    again = memoised_split(config, y)
    reference = _split_indices(config, y)
    for s in ("train", "val", "test"):
        assert np.array_equal(first[s], reference[s]) and np.array_equal(again[s], reference[s])
    # Other labels, another seed or other fractions are other splits, each memoised under its own key.
    other = y.copy()
    other[:10] = (other[:10] + 1) % 4
    for cfg, labels in (
        (config, other),
        (_config(tmp_path, val_fraction=0.3), y),
        (Config.model_validate(config.model_dump() | {"seed": 8}), y),
    ):
        got = memoised_split(cfg, labels)
        assert all(np.array_equal(got[s], _split_indices(cfg, labels)[s]) for s in got)
    assert len(list((tmp_path / "splits").iterdir())) == 4
    # A damaged memo is split again (and rewritten), never trusted.
    memo.write_bytes(b"not an npz")
    assert all(np.array_equal(memoised_split(config, y)[s], reference[s]) for s in reference)


def test_a_second_split_of_the_same_labels_does_not_import_scikit_learn(tmp_path: Path) -> None:
    probe = (
        "import sys, numpy as np\n"
        "from taktstock.config.schema import Config\n"
        "from taktstock.data.prepare import memoised_split\n"
        f"c = Config.model_validate({{'data': {{'cache_dir': {str(tmp_path)!r}}}}})\n"
        "parts = memoised_split(c, np.arange(200) % 3)\n"
        "print('SKLEARN', 'sklearn' in sys.modules, sorted(len(v) for v in parts.values()))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    first, second = (r.stdout.split("SKLEARN ", 1)[1].strip() for r in runs)
    assert first.startswith("True") and second.startswith("False") and first[4:] == second[5:]
