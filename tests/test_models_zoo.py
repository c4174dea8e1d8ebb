"""torchvision:/timm: models by name, initial weights (files, run directories, the local cache) and `taktstock models`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from taktstock.config import load_config
from taktstock.errors import ConfigError
from taktstock.models.weights import load_initial_weights, strip_wrapper_prefixes
from taktstock.models.zoo import build, list_models
from tests.conftest import cli_env, run_cli, tiny_config, write_config

DIGITS = (1, 8, 8)  # the digits source's images
FAST = {"epochs": 1, "batch_size": 64, "max_steps": 3, "log_every_n_steps": 1}


def zoo_config(model: dict, **sections) -> dict:
    config = tiny_config(train=FAST | sections.pop("train", {}), **sections)
    config["model"] = model  # replaces the tiny MLP's arguments
    return config


def test_torchvision_and_timm_models_train_on_digits_images(workdir: Path) -> None:
    for name in ("torchvision:resnet18", "timm:resnet10t"):
        run_dir = workdir / name.replace(":", "_")
        path = write_config(workdir / "exp.yaml", zoo_config({"name": name}))
        run_cli("train", str(path), "--run-dir", str(run_dir), cwd=workdir, check=True)
        weights = load_file(str(run_dir / "best.safetensors"))
        first = "conv1.weight" if name.startswith("torchvision") else "conv1.0.weight"
        assert weights["fc.weight"].shape[0] == 10  # head sized to the digits classes
        assert weights[first].shape[1] == 1  # first conv fitted to the 1-channel images
        assert not any(k.startswith(("_orig_mod.", "module.")) for k in weights)
        assert json.loads((run_dir / "run.json").read_text())["steps"] == 3


def test_unknown_model_and_argument_are_one_line_errors(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="torchvision has no model 'resnet19'"):
        load_config(None, ["model.name=torchvision:resnet19"])
    with pytest.raises(ConfigError, match=r"model\.widht: torchvision:resnet18 has no argument 'widht'"):
        load_config(None, ["model.name=torchvision:resnet18", "model.widht=3"])
    with pytest.raises(ConfigError, match="timm:resnet10t rejects the given arguments"):
        load_config(None, ["model.name=timm:resnet10t", "model.widht=3"])
    assert load_config(None, ["model.name=torchvision:resnet18", "model.zero_init_residual=true"]).model.params() == {
        "zero_init_residual": True
    }
    path = write_config(workdir / "bad.yaml", zoo_config({"name": "timm:no_such_net"}))
    proc = run_cli("train", str(path), cwd=workdir)
    assert proc.returncode == 2 and "timm has no model 'no_such_net'" in proc.stderr and "Traceback" not in proc.stderr


def test_pretrained_with_an_empty_cache_is_exit_2_naming_the_file(workdir: Path) -> None:
    path = write_config(workdir / "exp.yaml", zoo_config({"name": "torchvision:resnet18", "pretrained": True}))
    proc = run_cli("train", str(path), cwd=workdir, env=cli_env(TORCH_HOME=str(workdir / "torch_home")))
    assert proc.returncode == 2, proc.stderr
    expected = workdir / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"not in the local cache (expected {expected})" in proc.stderr and "model.weights: PATH" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (workdir / "experiments").exists()


def test_pretrained_from_the_local_cache_replaces_the_head_and_folds_the_first_conv(workdir: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18()  # stands in for the real file: 1000 classes, RGB
    cache = workdir / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cache / "resnet18-f37072fd.pth")
    config = zoo_config({"name": "torchvision:resnet18", "pretrained": True, "freeze": ["conv1.*", "layer4.*"]})
    run_dir = workdir / "run"
    proc = run_cli(
        "train", str(write_config(workdir / "exp.yaml", config)), "--run-dir", str(run_dir), cwd=workdir,
        env=cli_env(TORCH_HOME=str(workdir / "torch_home")), check=True,
    )  # fmt: skip
    assert "replaced (other shape): fc.weight, fc.bias" in proc.stderr and "first conv adapted" in proc.stderr
    trained = load_file(str(run_dir / "model.safetensors"))
    assert torch.equal(trained["conv1.weight"], imagenet.conv1.weight.detach().sum(1, keepdim=True))  # RGB kernel summed to grey
    for key, value in imagenet.state_dict().items():
        if key.startswith("layer4."):  # frozen: bitwise the pretrained values, BatchNorm statistics included
            assert torch.equal(trained[key], value), key
    assert trained["fc.weight"].shape == (10, 512)


def test_weights_from_a_run_directory_strict_and_relaxed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ten = build("torchvision:resnet18", {}, DIGITS, 10)
    (tmp_path / "run").mkdir()
    save_file({"_orig_mod." + k: v.contiguous() for k, v in ten.state_dict().items()}, tmp_path / "run" / "best.safetensors")
    cfg = load_config(None, ["model.name=torchvision:resnet18", f"model.weights={tmp_path / 'run'}"]).model
    five = build("torchvision:resnet18", {}, DIGITS, 5)
    with pytest.raises(ConfigError, match=r"shape differs: fc.bias, fc.weight.*weights_strict: false"):
        load_initial_weights(five, cfg)
    cfg.weights_strict = False
    head_before = five.fc.weight.detach().clone()
    report = load_initial_weights(five, cfg, announce=False)
    assert report is not None and sorted(report.mismatched) == ["fc.bias", "fc.weight"] and not report.missing
    assert torch.equal(five.fc.weight, head_before)  # the head of another size stays as initialised
    for key, value in ten.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(five.state_dict()[key], value), key


def test_weights_read_with_weights_only(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    cfg = load_config(None, [f"model.weights={tmp_path / 'evil.pt'}"]).model
    with pytest.raises(ConfigError, match=r"cannot read .* as a weights_only state dict"):
        load_initial_weights(build("torchvision:resnet18", {}, DIGITS, 10), cfg)
    assert strip_wrapper_prefixes({"module._orig_mod.a": torch.zeros(1)}).keys() == {"a"}


def test_models_command_lists_and_filters(workdir: Path) -> None:
    proc = run_cli("models", "--source", "timm", "--source", "builtin", "--filter", "convnext_at*", check=True)
    assert "timm:convnext_atto" in proc.stdout.split() and "timm:resnet10t" not in proc.stdout
    names = list_models("torchvision", "resnet1")
    assert {"torchvision:resnet18", "torchvision:resnet101"} <= set(names)
    assert not any("fasterrcnn" in n for n in list_models("torchvision", "resnet"))  # classification models only
    assert list_models("builtin", "res*") == ["resnet"]


def test_timm_pretrained_weights_come_from_the_hugging_face_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from taktstock.models.zoo import pretrained_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--timm--resnet10t.c3_in1k"
    with pytest.raises(ConfigError, match=rf"not in the local cache \(expected {repo}/snapshots/<revision>/model.safetensors\)"):
        pretrained_file("timm:resnet10t")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file({"fc.weight": torch.zeros(2, 2)}, repo / "snapshots" / "abc123" / "model.safetensors")
    assert pretrained_file("timm:resnet10t") == repo / "snapshots" / "abc123" / "model.safetensors"
