"""Freezing, gradual unfreezing, parameter groups, layer decay and the dry run's group table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from taktstock.config import load_config
from taktstock.errors import ConfigError
from taktstock.models.finetune import freeze, unfreeze
from taktstock.training.param_groups import build_param_groups, layer_ids
from tests.conftest import cli_env, run_cli, tiny_config, write_config
from tests.resume_harness import assert_resumed_from, newest_valid_checkpoint


def cnn_config(**train) -> dict:
    config = tiny_config(train={"epochs": 2, "batch_size": 128, "log_every_n_steps": 1} | train)
    config["model"] = {"name": "cnn", "channels": [8, 8]}
    return config


def test_frozen_parameters_and_batchnorm_statistics_are_bitwise_unchanged(workdir: Path) -> None:
    from safetensors.torch import save_file

    from taktstock.models.registry import build_model

    torch.manual_seed(3)  # initial weights other than the run's own initialisation (seed 1)
    save_file(build_model("cnn", {"channels": [8, 8]}, (1, 8, 8), 10).state_dict(), str(workdir / "start.safetensors"))
    config = cnn_config(max_steps=4)
    config["model"] |= {"weights": "start.safetensors", "freeze": ["features.0.*", "features.1.*"]}  # first conv + its BatchNorm
    config["optim"] |= {"weight_decay": 0.1}  # decay must not touch frozen weights either
    run = workdir / "tuned"
    run_cli("train", str(write_config(workdir / "b.yaml", config)), "--run-dir", str(run), cwd=workdir, check=True)
    before, after = load_file(str(workdir / "start.safetensors")), load_file(str(run / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("features.0.", "features.1."))]
    assert "features.1.running_mean" in frozen and "features.1.running_var" in frozen
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["features.3.weight"], after["features.3.weight"])  # the rest trained
    assert not torch.equal(before["features.4.running_mean"], after["features.4.running_mean"])


def test_frozen_norm_stays_in_eval_mode_after_train_and_unfreeze_restores_it() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    assert freeze(model, ["0.*", "1.*"]) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    model.train()
    assert not model[1].training and model[3].training
    stats = model[1].running_mean.clone()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert torch.equal(model[1].running_mean, stats) and model[0].weight.grad is None and model[2].weight.grad is not None
    unfreeze(model, ["0.*", "1.*"])
    model.train()
    assert model[1].training and model[0].weight.requires_grad
    with pytest.raises(ConfigError, match=r"model.freeze\[0\]: 'head.\*' matches no parameter"):
        freeze(model, ["head.*"])


def test_unfreeze_at_epoch_resumes_bit_identical(workdir: Path) -> None:
    config = cnn_config(epochs=2)
    config["model"] |= {"freeze": ["features.0.*"], "unfreeze_at_epoch": 1}
    full, split = workdir / "full", workdir / "split"
    # The uninterrupted reference in a fresh interpreter (with the test server's one intra-op thread: CPU results
    # depend on the thread count); the split run and its resume fork from the test server.
    a = str(write_config(workdir / "a.yaml", config))
    run_cli("train", a, "--run-dir", str(full), cwd=workdir, check=True, fresh=True, env=cli_env(OMP_NUM_THREADS="1"))
    one = config | {"train": config["train"] | {"epochs": 1}}
    run_cli("train", str(write_config(workdir / "b.yaml", one)), "--run-dir", str(split), cwd=workdir, check=True)
    epoch0 = load_file(str(split / "model.safetensors"))
    last = newest_valid_checkpoint(split)
    assert last is not None and last.step == json.loads((split / "run.json").read_text())["steps"]  # the end of epoch 0
    resumed = run_cli("train", "--resume", str(split), "train.epochs=2", cwd=workdir, check=True)
    assert_resumed_from(resumed.stderr, last)
    assert (full / "model.safetensors").read_bytes() == (split / "model.safetensors").read_bytes()
    final = load_file(str(full / "model.safetensors"))
    assert not torch.equal(epoch0["features.0.weight"], final["features.0.weight"])  # trained in epoch 1


def test_param_groups_first_match_wins_and_logs_every_groups_lr(workdir: Path) -> None:
    config = cnn_config(epochs=1, max_steps=2)
    config["optim"] |= {
        "lr": 0.001,
        "weight_decay": 0.05,
        "param_groups": [{"params": "head.*", "lr": 0.01}, {"params": ["head.*", "features.0.*"], "lr": 0.002, "weight_decay": 0.0}],
    }
    config["scheduler"] = {"name": "cosine"}
    path = write_config(workdir / "exp.yaml", config)
    cfg = load_config(path)
    from taktstock.models.cnn import SmallCNN

    model = SmallCNN((1, 8, 8), 10, channels=[8, 8])
    groups = {g["name"]: g for g in build_param_groups(cfg.optim, model)}
    assert [p.shape for p in groups["head"]["params"]] == [(10, 8)]  # head weight: first match wins
    assert groups["head"]["lr"] == 0.01 and groups["head"]["weight_decay"] == 0.05
    assert groups["head/no_decay"]["weight_decay"] == 0.0  # its bias
    assert groups["head_features.0"]["lr"] == 0.002 and len(groups["head_features.0"]["params"]) == 1
    assert len(groups["default/no_decay"]["params"]) == 2 * 4  # the 4 BatchNorms' weights and biases (the convs have none)
    run = workdir / "run"
    run_cli("train", str(path), "--run-dir", str(run), cwd=workdir, check=True)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    # After one cosine step of two, every group is at half its own base rate.
    assert first["lr/head"] == pytest.approx(0.005) and first["lr/default"] == pytest.approx(0.0005)
    assert first["lr/head_features.0"] == pytest.approx(0.001)
    out = run_cli("train", str(path), "--dry-run", cwd=workdir, check=True).stdout
    assert "frozen" in out and "head/no_decay" in out


def test_layer_decay_gives_each_layer_its_rate() -> None:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, depth=3, in_chans=1, num_classes=10)
    cfg = load_config(None, ["optim.lr=1.0", "optim.layer_decay=0.5"]).optim
    lr = {n: g["lr"] for g in build_param_groups(cfg, vit) for n, p in vit.named_parameters() if any(p is q for q in g["params"])}
    assert lr["patch_embed.proj.weight"] == 0.5**4 and lr["blocks.0.attn.qkv.weight"] == 0.5**3
    assert lr["blocks.2.mlp.fc2.weight"] == 0.5 and lr["head.weight"] == 1.0
    # Models without timm's group_matcher: the longest list of blocks orders the layers.
    plain = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4) for _ in range(3)]), nn.Linear(4, 2))
    ids, n = layer_ids(plain)
    assert n == 5 and [ids[k] for k in ("0.weight", "1.0.weight", "1.2.bias", "2.weight")] == [0, 1, 3, 4]
