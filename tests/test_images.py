"""Image sources: folder, pre-split and manifest indexes, fingerprint, bad files, seeded transforms,
channel statistics, the memmap pixel cache and the inference transform (issue 14, image data)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, cli_env, run_cli
from torch.utils.data import DataLoader

from taktstock.config.schema import Config
from taktstock.data.dataset import FieldSpec
from taktstock.data.images.inference import ImageInputs
from taktstock.data.images.prepare import prepare_images
from taktstock.data.images.transforms import apply_seeded, build_pipeline
from taktstock.data.loaders import EpochBatchSampler
from taktstock.deploy.predict import predict
from taktstock.errors import ConfigError, UserError

sys.path.insert(0, str(REPO / "scripts"))
from make_digit_images import write_digits

RANDOM = [{"RandomCrop": {"size": 16, "padding": 2}}, "RandomHorizontalFlip", {"ColorJitter": {"brightness": 0.5}}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits written as 16x16 PNG (8 per class), JPEG (RGB), and a pre-split PNG folder."""
    root = tmp_path_factory.mktemp("images")
    write_digits(root / "png", size=16, per_class=8)
    write_digits(root / "jpeg", size=16, fmt="jpeg", per_class=8, rgb=True)
    write_digits(root / "presplit", size=16, per_class=10, presplit=True)
    return {"png": root / "png", "jpeg": root / "jpeg", "presplit": root / "presplit"}


def image_config(path: Path, cache: Path, **data: Any) -> Config:
    base = {"source": "imagefolder", "path": str(path), "channels": 1, "cache_dir": str(cache)}
    return Config.model_validate({"seed": 3, "data": base | data})


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])  # the header survives: only the end is missing


def corrupt(path: Path) -> None:
    """Damage the pixel data in place, keeping size and mtime: the index and the header check cannot see it."""
    st, data = path.stat(), bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def batches(dataset: Any, epoch: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sampler = EpochBatchSampler(len(dataset), 16, seed=3)
    sampler.set_epoch(epoch)
    # An own generator, as taktstock's loaders use: the DataLoader would otherwise draw its base seed globally.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=dataset.collate, generator=torch.Generator())
    return list(loader)


def test_imagefolder_samples_splits_and_classes(folders: dict[str, Path], tmp_path: Path) -> None:
    data = prepare_images(image_config(folders["png"], tmp_path))
    assert data.class_names == [str(i) for i in range(10)] and data.num_outputs == 10
    sizes = {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 56, "val": 12, "test": 12}
    x, y = data.split("train")[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 16, 16) and y.dtype == torch.int64
    assert data.spec()["inputs"] == FieldSpec((1, 16, 16), "float32")
    # The split is stratified: every class in every split.
    for s in ("train", "val", "test"):
        ds = data.split(s)
        assert {int(ds[i][1]) for i in range(len(ds))} == set(range(10))
    # The cache is an index (no pixels) and a pickled split (what a worker receives) is small.
    assert not list(data.path.glob("pixels*")) and len(pickle.dumps(data.split("train"))) < 2000


def test_presplit_folder_keeps_the_given_splits(folders: dict[str, Path], tmp_path: Path) -> None:
    data = prepare_images(image_config(folders["presplit"], tmp_path, val_fraction=0.3))
    counts = {s: len(list((folders["presplit"] / s).rglob("*.png"))) for s in ("train", "val", "test")}
    assert {s: len(data.split(s)) for s in counts} == counts and sum(counts.values()) == 100
    val = data.split("val")
    assert all("val" in val.path_of(i).parts for i in range(len(val)))


def test_image_csv_manifest_with_relative_paths(folders: dict[str, Path], tmp_path: Path) -> None:
    manifest = folders["png"] / "manifest.csv"
    files = sorted(folders["png"].rglob("*.png"))
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "digit"])
        w.writerows([[str(p.relative_to(folders["png"])), p.parent.name] for p in files])
    try:
        cfg = image_config(manifest, tmp_path, source="image_csv", image_column="file", target="digit")
        data = prepare_images(cfg)
        assert sum(len(data.split(s)) for s in ("train", "val", "test")) == len(files)
        ds = data.split("test")
        assert all(int(ds[i][1]) == int(ds.path_of(i).parent.name) for i in range(len(ds)))
        with pytest.raises(ConfigError, match=r"data\.image_column: column 'path'"):
            prepare_images(image_config(manifest, tmp_path, source="image_csv", target="digit"))
    finally:
        manifest.unlink()


def test_fingerprint_follows_added_removed_and_changed_files(folders: dict[str, Path], tmp_path: Path) -> None:
    root = copy_folder(folders["png"], tmp_path / "f")
    cfg = image_config(root, tmp_path / "cache")
    first = prepare_images(cfg).fingerprint
    assert prepare_images(cfg).fingerprint == first
    # Transforms run per sample: changing them reuses the index.
    assert prepare_images(image_config(root, tmp_path / "cache", transforms={"train": RANDOM})).fingerprint == first
    shutil.copy(root / "3" / os.listdir(root / "3")[0], root / "3" / "extra.png")
    added = prepare_images(cfg).fingerprint
    (root / "3" / "extra.png").unlink()
    assert prepare_images(cfg).fingerprint == first
    victim = next((root / "5").iterdir())
    victim.unlink()
    removed = prepare_images(cfg).fingerprint
    shutil.copy(folders["png"] / "5" / victim.name, victim)
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer mtime
    touched = prepare_images(cfg).fingerprint
    assert len({first, added, removed, touched}) == 4


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_file_stops_prepare_or_is_skipped_with_a_warning(
    folders: dict[str, Path], tmp_path: Path, fmt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    root = copy_folder(folders[fmt], tmp_path / "f")
    bad = sorted((root / "7").iterdir())[2]
    truncate(bad)
    (root / "2" / "notes.png").write_text("not an image")
    with pytest.raises(ConfigError, match=rf"data.bad_samples: .*{bad.parent.parent.name}/2/notes.png.*\(and 1 more\)"):
        prepare_images(image_config(root, tmp_path / "cache"))
    data = prepare_images(image_config(root, tmp_path / "cache", bad_samples="skip"))
    err = capfd.readouterr().err
    assert "skipping 2 unreadable image(s)" in err and f"7/{bad.name} (" in err and "2/notes.png (not an image file" in err
    assert "truncated" in err.lower()
    assert sorted(data.skipped) == ["2/notes.png", f"7/{bad.name}"]
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 80 - 1


def test_file_that_breaks_after_prepare_is_named_by_the_worker(
    folders: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = copy_folder(folders["png"], tmp_path / "f")
    data = prepare_images(image_config(root, tmp_path / "cache"))
    train = data.split("train")
    broken = train.path_of(5)
    corrupt(broken)
    assert prepare_images(image_config(root, tmp_path / "cache")).fingerprint == data.fingerprint
    with pytest.raises(UserError, match=f"data.bad_samples: {broken}"):
        train[(0, 5)]
    # From a worker: the same one-line message in the main process, not the worker's traceback.
    with pytest.raises(UserError) as raised:
        batches(train, 0, workers=2)
    assert str(raised.value).startswith(f"data.bad_samples: {broken}: ") and "Traceback" not in str(raised.value)
    skipping = prepare_images(image_config(root, tmp_path / "cache", bad_samples="skip")).split("train")
    # With two workers the file is named in the log and replaced by the next sample of the split.
    got = batches(skipping, 0, workers=2)
    assert f"skipping unreadable image: {broken}" in capfd.readouterr().err
    assert sum(len(y) for _, y in got) == len(skipping)
    assert torch.equal(skipping[(1, 5)][1], skipping[(1, 6)][1])


def test_random_transforms_are_fixed_by_seed_epoch_and_index(folders: dict[str, Path], tmp_path: Path) -> None:
    train = prepare_images(image_config(folders["png"], tmp_path, transforms={"train": RANDOM})).split("train")
    state = torch.get_rng_state()
    in_process = batches(train, 2, workers=0)
    assert torch.equal(torch.get_rng_state(), state)  # dropout's stream is untouched by the transforms
    with_workers = batches(train, 2, workers=2)
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(in_process, with_workers, strict=True))
    # Order-free: a sample alone equals that sample inside its batch; another epoch draws anew.
    first = EpochBatchSampler(len(train), 16, seed=3).global_batches(2)[0]
    assert torch.equal(train[(2, int(first[3]))][0], in_process[0][0][3])
    assert not torch.equal(train[(3, int(first[3]))][0], in_process[0][0][3])
    # Evaluation keys apply no random transform: only float conversion and normalisation.
    plain = build_pipeline([], "eval", train.settings.mean, train.settings.std)(train.pixels(4, train=False))
    assert torch.equal(train[4][0], plain) and not torch.equal(train[(2, 4)][0], plain)


def test_same_sample_in_a_fresh_process(folders: dict[str, Path], tmp_path: Path) -> None:
    data = prepare_images(image_config(folders["jpeg"], tmp_path, channels=3, transforms={"train": [*RANDOM, "TrivialAugmentWide"]}))
    here = data.split("train")[(5, 9)][0]
    code = (
        "import sys, pickle, torch; ds = pickle.load(open(sys.argv[1], 'rb')); "
        "torch.manual_seed(123); sys.stdout.buffer.write(ds[(5, 9)][0].numpy().tobytes())"
    )
    (tmp_path / "ds.pkl").write_bytes(pickle.dumps(data.split("train")))
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ds.pkl")], capture_output=True, env=cli_env(), check=True, timeout=120
    ).stdout
    assert out == here.numpy().tobytes()


def test_memmap_cache_gives_the_decode_path_batches(folders: dict[str, Path], tmp_path: Path) -> None:
    kwargs = {"transforms": {"train": [{"RandomCrop": {"size": [12, 14], "padding": 2}}, *RANDOM[1:]]}, "image_size": [12, 14]}
    decoded = prepare_images(image_config(folders["png"], tmp_path, **kwargs))
    cached = prepare_images(image_config(folders["png"], tmp_path, image_cache="memmap", **kwargs))
    assert (cached.path / "pixels.npy").is_file() and decoded.path != cached.path
    assert decoded.settings.mean == cached.settings.mean and decoded.settings.std == cached.settings.std
    for a, b in zip(batches(decoded.split("train"), 1, 0), batches(cached.split("train"), 1, 2), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and tuple(a[0].shape[1:]) == (1, 12, 14)
    test_a, test_b = decoded.split("test"), cached.split("test")
    assert all(torch.equal(test_a[i][0], test_b[i][0]) for i in range(len(test_a)))
    # auto: the cache is used when it fits memory_budget_mb, not when it does not.
    assert prepare_images(image_config(folders["png"], tmp_path, image_cache="auto", **kwargs)).settings.pixel_cache
    small = image_config(folders["png"], tmp_path, image_cache="auto", memory_budget_mb=0.001, **kwargs)
    assert not prepare_images(small).settings.pixel_cache


def test_standard_normalisation_uses_training_channel_statistics(folders: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    data = prepare_images(image_config(folders["jpeg"], tmp_path, channels=3))
    train = data.split("train")
    raw = torch.stack([train.pixels(i, train=False) for i in range(len(train))]).double() / 255
    assert np.allclose(data.settings.mean, raw.mean((0, 2, 3)).numpy(), atol=1e-9)
    assert np.allclose(data.settings.std, raw.std((0, 2, 3), correction=0).numpy(), atol=1e-9)
    normalised = torch.stack([train[i][0] for i in range(len(train))]).double()
    assert normalised.mean((0, 2, 3)).abs().max() < 1e-5 and (normalised.std((0, 2, 3)) - 1).abs().max() < 1e-3
    # A large split is sampled: a bound of 10 images gives other (but close) statistics.
    import taktstock.data.images.prepare as prep

    monkeypatch.setattr(prep, "sample_positions", lambda n: np.linspace(0, n - 1, 10).astype(np.int64))
    sampled = prepare_images(image_config(folders["jpeg"], tmp_path / "other", channels=3))
    assert sampled.settings.mean != data.settings.mean and np.allclose(sampled.settings.mean, data.settings.mean, atol=0.1)
    assert prepare_images(image_config(folders["jpeg"], tmp_path, channels=3, normalize="none")).settings.mean is None


def test_channels_and_size_follow_the_config(folders: dict[str, Path], tmp_path: Path) -> None:
    rgb_from_gray = prepare_images(image_config(folders["png"], tmp_path, channels=3, image_size=8))
    assert rgb_from_gray.input_shape == (3, 8, 8) and tuple(rgb_from_gray.split("val")[0][0].shape) == (3, 8, 8)
    gray_from_rgb = prepare_images(image_config(folders["jpeg"], tmp_path, channels=1))
    assert gray_from_rgb.input_shape == (1, 16, 16)  # image_size defaults to the first image's size


def test_transform_config_errors_name_the_item(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.transforms.train\[1\] \(RandomFlip\): unknown .*did you mean"):
        build_pipeline(["RandomHorizontalFlip", "RandomFlip"], "data.transforms.train", None, None)
    with pytest.raises(ConfigError, match=r"data.transforms.eval\[0\] \(CenterCrop\): bad arguments"):
        build_pipeline([{"CenterCrop": {"sise": 3}}], "data.transforms.eval", None, None)
    # YAML spellings of dtypes and interpolation modes are accepted.
    pipe = build_pipeline(
        [{"Resize": {"size": 4, "interpolation": "nearest"}}, {"ToDtype": {"dtype": "float64", "scale": True}}], "t", None, None
    )
    assert apply_seeded(pipe, torch.zeros(1, 8, 8, dtype=torch.uint8), 0).dtype == torch.float64


def test_cli_prepare_rejects_unknown_transform_and_reports_splits(folders: dict[str, Path], workdir: Path) -> None:
    config = {"data": {"source": "imagefolder", "path": str(folders["png"]), "channels": 1, "transforms": {"train": ["RandomFlipp"]}}}
    path = workdir / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    bad = run_cli("prepare", str(path), cwd=workdir)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "data.transforms.train[0] (RandomFlipp): unknown torchvision.transforms.v2 transform" in bad.stderr
    config["data"]["transforms"]["train"] = ["RandomHorizontalFlip"]
    path.write_text(yaml.safe_dump(config))
    good = run_cli("prepare", str(path), cwd=workdir)
    assert good.returncode == 0, good.stderr
    assert "train 56, val 12, test 12; input shape (1, 16, 16), outputs 10" in good.stdout


def test_inference_inputs_equal_evaluation_samples(folders: dict[str, Path], tmp_path: Path) -> None:
    data = prepare_images(
        image_config(folders["jpeg"], tmp_path, channels=3, image_size=12, transforms={"eval": [{"Grayscale": {"num_output_channels": 3}}]})
    )
    test = data.split("test")
    inputs = ImageInputs(data.preprocessing())([test.path_of(i) for i in range(4)])
    assert torch.equal(inputs, torch.stack([test[i][0] for i in range(4)]))
    with pytest.raises(UserError, match="input file not found"):
        ImageInputs(data.preprocessing())([tmp_path / "missing.png"])


def test_predict_on_image_files_applies_the_eval_transforms(folders: dict[str, Path], workdir: Path) -> None:
    """A run directory as training writes it (config, preprocessing.json, weights) -> `taktstock predict` on files."""
    from safetensors.torch import save_file

    from taktstock.config.loader import config_to_dict
    from taktstock.models.registry import build_model

    cfg = image_config(folders["jpeg"], workdir / "cache", channels=3, image_size=12, transforms={"eval": [{"CenterCrop": {"size": 12}}]})
    cfg.model = {"name": "cnn", "channels": [4, 8]}
    data = prepare_images(cfg)
    run = workdir / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    (run / "preprocessing.json").write_text(json.dumps(data.preprocessing()))
    torch.manual_seed(0)
    net = build_model("cnn", {"channels": [4, 8]}, data.input_shape, data.num_outputs).eval()
    save_file(net.state_dict(), str(run / "best.safetensors"))
    test = data.split("test")
    with torch.no_grad():
        expected = torch.softmax(net(torch.stack([test[i][0] for i in range(len(test))])), dim=-1)
    header, rows = predict(run, test.path_of(0))
    assert header[:2] == ["file", "prediction"] and len(header) == 12 and rows[0][0] == str(test.path_of(0))
    assert torch.allclose(torch.tensor(rows[0][2:]), expected[0], atol=1e-6)
    # (a folder through the CLI: tests/test_images_train.py, on a trained run)
    missing = run_cli("predict", str(run), str(workdir / "nope.png"), cwd=workdir)
    assert missing.returncode == 2 and "input file not found" in missing.stderr and "Traceback" not in missing.stderr


def test_a_registered_dataset_source_passes_config_load_and_runs_its_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`@register_dataset` sources are in the registry config validation asks, with their own load-time check."""
    from taktstock.config.loader import validate

    (tmp_path / "shards_plugin.py").write_text(
        "from taktstock.data.dataset import register_dataset\n"
        "from taktstock.errors import ConfigError\n"
        "def check(config):\n"
        "    if config.data.kwargs.get('shards', 1) < 1:\n"
        "        raise ConfigError('data.kwargs.shards: must be at least 1')\n"
        "@register_dataset('test_shards', check=check)\n"
        "def shards(config): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert validate({"plugins": ["shards_plugin"], "data": {"source": "test_shards"}}, {}, "x").data.source == "test_shards"
    with pytest.raises(ConfigError, match="must be at least 1"):
        validate({"plugins": ["shards_plugin"], "data": {"source": "test_shards", "kwargs": {"shards": 0}}}, {}, "x")
    with pytest.raises(ConfigError, match="imagefolder"):  # the built-in image sources are listed among the choices
        validate({"data": {"source": "imagefolderr"}}, {}, "x")
