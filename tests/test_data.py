"""Data preparation and batching: deterministic leak-free splits, train-only statistics, the cache,
file sources, and every training sample exactly once per epoch on both batching paths."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cli_env, run_cli, tiny_config, write_config

from taktstock.config.loader import validate
from taktstock.config.schema import Config
from taktstock.data.loaders import EpochBatchSampler, build_train_batches
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# The module, not the `prepare` function that taktstock.data re-exports under the same name.
prepare_module = importlib.import_module("taktstock.data.prepare")

# Subprocesses use one intra-op thread: tiny models gain nothing from more, and on a busy
# machine two spinning threads per process slow a run down several times.
ONE_THREAD = cli_env(OMP_NUM_THREADS="1")


def make_config(**sections: Any) -> Config:
    return validate(tiny_config(**sections), {}, "test")


def write_id_npz(path: Path, n: int = 300, seed: int = 0) -> Path:
    """Column 0 of x is the sample id, so a prepared split reveals exactly which samples it holds."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.arange(n), rng.standard_normal((n, 2))]).astype(np.float32)
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])  # imbalanced, to make stratification visible
    np.savez(path, x=x, y=y)
    return path


def id_data(workdir: Path, **data: Any) -> Config:
    path = write_id_npz(workdir / "ids.npz")
    return make_config(data={"source": "npz", "path": str(path), "normalize": "none"} | data)


def ids_of(prepared: Any, split: str) -> np.ndarray:
    return prepared.split(split).x[:, 0].astype(np.int64)


def test_split_is_deterministic_for_a_seed_and_changes_with_it(workdir: Path) -> None:
    a = prepare(make_config(data={"cache_dir": "cache_a"}))
    b = prepare(make_config(data={"cache_dir": "cache_b"}))  # a separate cache: computed again
    assert a.path != b.path and b.path.is_file()
    for split in ("train", "val", "test"):
        assert np.array_equal(a.split(split).x, b.split(split).x)
        assert np.array_equal(a.split(split).y, b.split(split).y)
    c = prepare(make_config(seed=2, data={"cache_dir": "cache_a"}))
    assert not np.array_equal(a.split("val").y, c.split("val").y)


def test_splits_are_disjoint_complete_and_sized_by_the_fractions(workdir: Path) -> None:
    data = prepare(id_data(workdir, val_fraction=0.2, test_fraction=0.1))
    train, val, test = (ids_of(data, s) for s in ("train", "val", "test"))
    assert len(set(train) & set(val)) == len(set(train) & set(test)) == len(set(val) & set(test)) == 0
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(300))
    assert (len(train), len(val), len(test)) == (210, 60, 30)
    # Targets travel with their samples.
    y_all = np.load(workdir / "ids.npz")["y"]
    assert np.array_equal(data.split("val").y, y_all[val])


def test_split_is_stratified_by_class(workdir: Path) -> None:
    data = prepare(id_data(workdir, val_fraction=0.2, test_fraction=0.2))
    y_all = np.load(workdir / "ids.npz")["y"]
    for split, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.bincount(data.split(split).y, minlength=3)
        expected = fraction * np.bincount(y_all, minlength=3)
        assert np.all(np.abs(counts - expected) <= 1.5), (split, counts, expected)
    # Without stratification the rare class drifts further in at least one split (seeded, so fixed).
    unstrat = prepare(id_data(workdir, val_fraction=0.2, test_fraction=0.2, stratify=False))
    drift = max(
        np.abs(np.bincount(unstrat.split(s).y, minlength=3) - f * np.bincount(y_all, minlength=3)).max()
        for s, f in (("train", 0.6), ("val", 0.2), ("test", 0.2))
    )
    assert drift > 1.5


def test_standard_normalisation_uses_training_statistics_only(workdir: Path) -> None:
    raw = prepare(make_config(data={"normalize": "none"}))
    std = prepare(make_config(data={"normalize": "standard"}))
    x_train, x_val = raw.split("train").x.astype(np.float64), raw.split("val").x.astype(np.float64)
    mean, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)  # blank pixels in every training image stay unscaled
    np.testing.assert_allclose(std.split("train").x, (x_train - mean) / sd, atol=1e-5)
    np.testing.assert_allclose(std.split("val").x, (x_val - mean) / sd, atol=1e-5)
    # Statistics of all data (a leak) would give a different result.
    x_all = np.concatenate([raw.split(s).x for s in ("train", "val", "test")]).astype(np.float64)
    assert not np.allclose(std.split("val").x, (x_val - x_all.mean(0)) / np.where(x_all.std(0) > 1e-8, x_all.std(0), 1.0), atol=1e-3)
    np.testing.assert_allclose(std.normalizer.shift, mean, atol=1e-5)
    # Only the inputs change; the split and targets do not depend on the normalisation.
    for split in ("train", "val", "test"):
        assert np.array_equal(raw.split(split).y, std.split(split).y)


def test_minmax_normalisation_maps_training_range_to_unit_interval(workdir: Path) -> None:
    raw = prepare(make_config(data={"source": "wine", "normalize": "none"}))
    mm = prepare(make_config(data={"source": "wine", "normalize": "minmax"}))
    x = raw.split("train").x.astype(np.float64)
    np.testing.assert_allclose(mm.split("train").x, (x - x.min(0)) / (x.max(0) - x.min(0)), atol=1e-5)
    np.testing.assert_allclose(mm.split("train").x.min(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(mm.split("train").x.max(0), 1.0, atol=1e-6)


def _counting_build(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = prepare_module._build

    def build(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "_build", build)
    return calls


def test_cache_is_reused_unless_a_preprocessing_setting_changes(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_build(monkeypatch)
    first = prepare(make_config())
    assert len(calls) == 1 and first.path.is_file()
    stamp = first.path.stat().st_mtime_ns
    # Training settings do not touch the prepared data.
    again = prepare(make_config(optim={"lr": 0.1}, train={"epochs": 9, "batch_size": 8}, model={"hidden": [4]}))
    assert len(calls) == 1 and again.path == first.path and first.path.stat().st_mtime_ns == stamp
    assert np.array_equal(again.split("train").x, first.split("train").x)
    # Every preprocessing setting does.
    paths = {first.path}
    for change in ({"data": {"normalize": "minmax"}}, {"data": {"val_fraction": 0.2}}, {"data": {"stratify": False}}, {"seed": 5}):
        paths.add(prepare(make_config(**change)).path)
    assert len(calls) == 5 and len(paths) == 5


def test_cache_is_rebuilt_when_a_data_file_changes(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_build(monkeypatch)
    config = id_data(workdir)
    before = prepare(config)
    prepare(config)
    assert len(calls) == 1
    write_id_npz(workdir / "ids.npz", seed=1)
    changed = prepare(config)
    assert len(calls) == 2 and changed.path != before.path
    assert not np.array_equal(changed.split("train").x, before.split("train").x)


def test_damaged_cache_is_rebuilt(workdir: Path) -> None:
    first = prepare(make_config())
    first.path.write_bytes(b"not an npz")
    again = prepare(make_config())
    assert np.array_equal(again.split("test").x, first.split("test").x)


def test_csv_source_with_string_labels(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    labels = ["dog", "cat", "bird"]
    lines = ["width, height,label"]
    for i in range(60):
        lines.append(f"{rng.normal() + i % 3:.4f},{rng.normal():.4f},{labels[i % 3]}")
    (workdir / "pets.csv").write_text("\n".join(lines) + "\n\n")  # a trailing blank line, as editors leave them
    data = prepare(make_config(data={"source": "csv", "path": "pets.csv", "target": "label"}))
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.num_outputs == 3 and data.input_shape == (2,)
    assert data.feature_names == ["width", "height"]
    y = data.split("train").y
    assert y.dtype == np.int64 and set(y.tolist()) == {0, 1, 2}
    assert sum(len(data.split(s).y) for s in ("train", "val", "test")) == 60


def test_csv_regression_targets_are_float32(workdir: Path) -> None:
    rows = ["a,b,price"] + [f"{i},{i % 7},{i * 1.5 + 0.25}" for i in range(40)]
    (workdir / "prices.csv").write_text("\n".join(rows) + "\n")
    config = make_config(
        data={"source": "csv", "path": "prices.csv", "target": "price"},
        loss={"name": "mse"},
        metrics={"monitor": "val/loss", "mode": "min"},
    )
    data = prepare(config)
    assert data.num_outputs == 1 and data.class_names == []
    for split in ("train", "val", "test"):
        assert data.split(split).y.dtype == np.float32
    assert set((data.split("train").y - 0.25) / 1.5) <= set(range(40))


def test_csv_bad_inputs_are_config_errors(workdir: Path) -> None:
    # Text columns and gaps are valid table features (tests/test_tables.py); a wrong target column is not.
    (workdir / "bad.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    with pytest.raises(ConfigError, match=r"data.target: column 'y' not in bad.csv \(columns: a, b, label\)"):
        prepare(make_config(data={"source": "csv", "path": "bad.csv", "target": "y"}))
    with pytest.raises(ConfigError, match=r"data\.path: required"):
        prepare(make_config(data={"source": "csv", "target": "label"}))


def test_npz_source_classification_and_regression(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(5, 8, size=(80, 1))  # a column vector of labels, as often saved
    np.savez(workdir / "d.npz", x=rng.standard_normal((80, 2, 3)), y=y, price=rng.standard_normal(80))
    data = prepare(make_config(data={"source": "npz", "path": "d.npz"}))
    assert data.input_shape == (2, 3) and data.num_outputs == 3 and data.class_names == ["5", "6", "7"]
    assert data.split("train").x.dtype == np.float32 and data.split("train").y.dtype == np.int64
    assert data.split("train").y.ndim == 1
    reg = prepare(
        make_config(data={"source": "npz", "path": "d.npz", "target": "price"}, loss={"name": "l1"}, metrics={"monitor": "val/mae"})
    )
    assert reg.split("val").y.dtype == np.float32 and reg.num_outputs == 1
    with pytest.raises(ConfigError, match="must contain arrays 'x' and 'label'"):
        prepare(make_config(data={"source": "npz", "path": "d.npz", "target": "label"}))


def test_classification_of_a_continuous_target_explains_the_split_failure(workdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot split 442 samples .* use a regression loss \(loss.name: mse\)"):
        prepare(make_config(data={"source": "diabetes"}))


def test_missing_data_file_is_exit_2_naming_data_path(workdir: Path) -> None:
    path = write_config(workdir / "exp.yaml", tiny_config(data={"source": "csv", "path": "missing.csv", "target": "y"}))
    proc = run_cli("train", str(path), "--run-dir", "run", cwd=workdir, env=ONE_THREAD)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: data.path: file not found: missing.csv" in proc.stderr
    assert not (workdir / "run").exists()


def _epoch_ids(batches: Any, epoch: int) -> list[np.ndarray]:
    return [x[:, 0].numpy().astype(np.int64) for x, _ in batches.epoch(epoch)]


@pytest.mark.parametrize(("n", "batch_size"), [(100, 10), (103, 10), (7, 16)])
def test_epoch_batch_sampler_yields_every_index_once_per_epoch(n: int, batch_size: int) -> None:
    sampler = EpochBatchSampler(n, batch_size, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        keys = [k for batch in sampler for k in batch]
        assert all(e == epoch for e, _ in keys)
        order = [i for _, i in keys]
        assert sorted(order) == list(range(n))
        assert len(sampler) == -(-n // batch_size)
        orders.append(order)
    if n > 10:
        assert orders[0] != orders[1]  # reshuffled each epoch
    # Resuming at batch k yields exactly the remaining batches of that epoch.
    sampler.set_epoch(1, start_batch=2)
    assert [i for batch in sampler for _, i in batch] == orders[1][2 * batch_size :]


def test_both_batching_paths_yield_identical_batches_covering_each_sample_once(workdir: Path) -> None:
    config = id_data(workdir, augment={"noise_std": 0.1})
    data = prepare(config)
    split = data.split("train")
    device = torch.device("cpu")
    paths = {}
    for mode in ("always", "never"):
        cfg = config.model_copy(update={"data": config.data.model_copy(update={"in_memory": mode})})
        paths[mode] = build_train_batches(split, cfg, device)
    assert type(paths["always"]).__name__ == "InMemoryBatches" and type(paths["never"]).__name__ == "DataLoaderBatches"
    for epoch in (0, 1):
        a, b = list(paths["always"].epoch(epoch)), list(paths["never"].epoch(epoch))
        assert len(a) == len(b) == len(paths["always"])
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        # Column 0 is the id plus augmentation noise: round to recover it.
        ids = np.concatenate([np.rint(xa[:, 0].numpy()).astype(np.int64) for xa, _ in a])
        assert sorted(ids.tolist()) == sorted(ids_of(data, "train").tolist())
    # Augmentation is a function of (seed, epoch, index): a second pass over an epoch is identical.
    again = list(paths["never"].epoch(1))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(again, list(paths["always"].epoch(1)), strict=True))
