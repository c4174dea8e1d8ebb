"""The first week's output: batch-job progress lines, configs that extend a base, readable learning
curves, dashboards that open on what matters, truthful hf: load messages and device statistics."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import run_cli, tiny_config, write_config

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG)
    return struct.unpack(">II", data[16:24])


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- batch-job logs --------------------------------------------------------------------------------


def test_without_a_terminal_training_prints_one_line_per_validation_with_step_metrics_throughput_and_eta(workdir: Path) -> None:
    config = tiny_config(train={"epochs": 2, "batch_size": 64, "log_every_n_steps": 5, "val_every_n_steps": 10})
    config["logging"] |= {"progress_every_minutes": 60}  # no timed training line in a few seconds
    proc = run_cli("train", str(write_config(workdir / "c.yaml", config)), "--run-dir", "run", cwd=workdir, check=True)
    vals = [r for r in records(workdir / "run") if "val/loss" in r]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[val]")]
    assert len(lines) == len(vals) == 4  # steps 10, 20 (epoch end), 30, 40
    total = 40
    for line, r in zip(lines, vals, strict=True):
        assert line.startswith(f"[val] step {r['step']}/{total} ({100 * r['step'] / total:.0f}%)  epoch {r['epoch'] + 1}/2  "), line
        assert f"val/loss {r['val/loss']:.4g}" in line and f"val/acc {r['val/acc']:.4g}" in line
        assert re.search(r"[\d,]+ samples/s  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d$", line), line
    assert not [line for line in proc.stdout.splitlines() if line.startswith("[train]")]
    # The CPU path of the device statistics: nothing logged, nothing broken.
    assert not [k for r in records(workdir / "run") for k in r if k.startswith("device/")]


def test_progress_lines_every_n_minutes_and_off(workdir: Path) -> None:
    config = tiny_config(train={"epochs": 1, "batch_size": 64, "log_every_n_steps": 5})
    config["logging"] |= {"progress_every_minutes": 1e-6}  # due at every logged interval
    proc = run_cli("train", str(write_config(workdir / "c.yaml", config)), "--run-dir", "run", cwd=workdir, check=True)
    logged = [r["step"] for r in records(workdir / "run") if "train/loss_step" in r]
    train_lines = [line for line in proc.stdout.splitlines() if line.startswith("[train]")]
    assert [int(re.match(r"\[train\] step (\d+)/", line).group(1)) for line in train_lines] == logged  # type: ignore[union-attr]
    assert all("train/loss_step" in line for line in train_lines)
    off = run_cli(
        "train", str(write_config(workdir / "c.yaml", config)), "logging.progress=off", "--run-dir", "off", cwd=workdir, check=True
    )
    assert not [line for line in off.stdout.splitlines() if line.startswith("[")]


# -- configs that extend a base --------------------------------------------------------------------


def test_extends_chains_merge_before_overrides_and_show_their_sources(workdir: Path) -> None:
    base = tiny_config(train={"epochs": 3, "batch_size": 64, "log_every_n_steps": 5})
    write_config(workdir / "base.yaml", base)
    (workdir / "exp").mkdir()
    (workdir / "exp" / "mid.yaml").write_text("extends: ../base.yaml\nmodel: {hidden: [16, 8]}\noptim: {lr: 0.01}\n")
    (workdir / "exp" / "top.yaml").write_text("extends: [mid.yaml]\nexperiment: {name: top}\ntrain: {epochs: 1}\n")
    proc = run_cli("config", "show", "exp/top.yaml", "optim.lr=0.02", "--sources", cwd=workdir, check=True)
    rows = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    assert rows["experiment.name"].endswith("# exp/top.yaml")
    assert rows["train.epochs"].startswith("train.epochs: 1 ") and rows["train.epochs"].endswith("# exp/top.yaml")
    assert rows["train.batch_size"].startswith("train.batch_size: 64 ") and rows["train.batch_size"].endswith("# base.yaml")
    assert rows["model.hidden"].startswith("model.hidden: [16, 8] ") and rows["model.hidden"].endswith("# exp/mid.yaml")  # list replaced
    assert rows["model.dropout"].endswith("# base.yaml")  # dict merged key by key
    assert rows["optim.lr"].startswith("optim.lr: 0.02 ") and rows["optim.lr"].endswith("# override")
    assert rows["train.max_steps"].endswith("# default")
    # Training from it stores the merged config, not the extends line.
    run_cli("train", "exp/top.yaml", "optim.lr=0.02", "--run-dir", "run", cwd=workdir, check=True)
    stored = yaml.safe_load((workdir / "run" / "config.yaml").read_text())
    assert "extends" not in stored
    assert (stored["experiment"]["name"], stored["train"]["epochs"], stored["model"]["hidden"], stored["optim"]["lr"]) == (
        "top",
        1,
        [16, 8],
        0.02,
    )
    assert stored["train"]["batch_size"] == 64


def test_extends_cycles_and_missing_bases_exit_2_naming_the_files(workdir: Path) -> None:
    (workdir / "a.yaml").write_text("extends: b.yaml\n")
    (workdir / "b.yaml").write_text("extends: [c.yaml]\n")
    (workdir / "c.yaml").write_text("extends: a.yaml\n")
    proc = run_cli("config", "show", "a.yaml", cwd=workdir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cycle" in proc.stderr and re.search(r"a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml", proc.stderr), proc.stderr
    (workdir / "d.yaml").write_text("extends: nowhere.yaml\n")
    proc = run_cli("train", "d.yaml", cwd=workdir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: d.yaml:1: extends: base config not found: nowhere.yaml"
    # A mistake inside a base is reported at its own file and line.
    (workdir / "bad.yaml").write_text("seed: 1\ntrain: {epohcs: 2}\n")
    (workdir / "e.yaml").write_text("extends: bad.yaml\n")
    proc = run_cli("config", "show", "e.yaml", cwd=workdir)
    assert proc.returncode == 2 and "bad.yaml:2: train.epohcs: unknown key" in proc.stderr


# -- plots -----------------------------------------------------------------------------------------


def test_learning_curves_are_a_screen_sized_grid_with_train_and_val_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from taktstock.tracking.plots import group_names, learning_curves

    saved: list[Figure] = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real_savefig(self, *a, **k))[1])
    recs: list[dict[str, Any]] = []
    for step in range(1, 41):
        recs.append({"step": step, "epoch": step // 20, "train/loss_step": 1 / step, "train/acc_step": 0.5, "lr": 0.1,
                     "lr/default": 0.1, "lr/default/no_decay": 0.1, "device/mem_peak_gib": 1.0})  # fmt: skip
        if step % 10 == 0:
            recs.append(
                {"step": step, "epoch": step // 20, "val/loss": 1.0, "val/acc": 0.5, "val/f1": 0.4, "val/precision": 0.3, "val/recall": 0.2}
            )
        if step % 20 == 0:
            recs.append({"step": step, "epoch": step // 20, "train/loss": 1.0, "train/acc": 0.5})
    path = learning_curves(recs, tmp_path / "lc.png", "run")
    width, height = png_size(path)  # type: ignore[arg-type]
    assert width <= 1600 and height <= 800  # 3 columns of 2 rows, not a 3150 px strip
    axes = [ax for ax in saved[0].axes if ax.get_visible()]
    panels = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in axes}
    assert panels == {
        "loss": ["train (per step)", "train (epoch mean)", "val"],
        "accuracy": ["train (per step)", "train (epoch mean)", "val"],
        "F1": ["val"],
        "precision": ["val"],
        "recall": ["val"],
        "learning rate": ["model, with weight decay", "model, no weight decay (biases, norms)"],
    }
    assert group_names(["head", "default/layer2", "default/layer2/no_decay"]) == {
        "head": "head",
        "default/layer2": "all other parameters, layer 2, with weight decay",
        "default/layer2/no_decay": "all other parameters, layer 2, no weight decay (biases, norms)",
    }


# -- dashboards ------------------------------------------------------------------------------------


def test_tensorboard_run_is_the_run_directory_with_hparams_and_no_single_point_cards(workdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = tiny_config(train={"epochs": 1, "batch_size": 64, "log_every_n_steps": 5})
    config["logging"] |= {"tensorboard": True}
    run_cli("train", str(write_config(workdir / "c.yaml", config)), "--run-dir", "runs/mine", cwd=workdir, check=True)
    run = workdir / "runs" / "mine"
    events = list(run.glob("events.out.tfevents.*"))
    assert len(events) == 1 and not list(run.glob("*/**/events.out.tfevents.*"))  # one run, named 'mine' under --logdir runs
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "val/acc" in scalars and not [t for t in scalars if t.startswith("hparam")]
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/experiment"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == 0.003 and start.hparams["model.name"].string_value == "mlp"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"val/loss", "val/acc", "val/f1", "val/precision", "val/recall"}


def test_mlflow_run_has_the_data_as_dataset_inputs_and_system_metrics(workdir: Path) -> None:
    import mlflow

    from taktstock.config import load_config
    from taktstock.data.prepare import prepare

    db = workdir / "mlflow.db"
    config = tiny_config(train={"epochs": 1, "batch_size": 64, "log_every_n_steps": 5})
    config["logging"] |= {
        "mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{db}", "log_model": False, "system_metrics_interval_s": 0.2}
    }
    path = write_config(workdir / "c.yaml", config)
    run_cli("train", str(path), "--run-dir", "on", cwd=workdir, check=True)
    run_cli("train", str(path), "logging.mlflow.system_metrics=false", "--run-dir", "off", cwd=workdir, check=True)
    fingerprint = prepare(load_config(path)).fingerprint
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    on, off = runs["on"], runs["off"]
    inputs = {i.tags[0].value: i for i in on.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert {k: (i.dataset.name, i.dataset.digest, i.dataset.source_type) for k, i in inputs.items()} == {
        split: ("digits", f"{fingerprint[:16]}-{split}", "code") for split in ("train", "val", "test")
    }
    assert sum(int({t.key: t.value for t in i.tags}["taktstock.num_samples"]) for i in inputs.values()) == 1797  # the digits
    assert "system/cpu_utilization_percentage" in on.data.metrics and "system/system_memory_usage_megabytes" in on.data.metrics
    assert not [k for k in off.data.metrics if k.startswith("system/")]


# -- hf: load messages -----------------------------------------------------------------------------

TINY_BERT = {"vocab_size": 20, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
             "max_position_embeddings": 32}  # fmt: skip


def test_hf_directory_load_report_is_rephrased_in_training_and_silent_when_the_run_weights_follow(
    workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import transformers
    from safetensors.torch import load_file

    from tests.test_hf_models import TOKENS

    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(workdir / "bert")  # a pretrained body, no head
    (workdir / "tokens.py").write_text(TOKENS)
    config = tiny_config(
        data={"source": "tokens:Tokens", "normalize": "none"}, train={"epochs": 1, "max_steps": 2, "batch_size": 32, "log_every_n_steps": 1}
    )
    config["model"] = {"name": f"hf:{workdir / 'bert'}"}
    train = run_cli("train", str(write_config(workdir / "c.yaml", config)), "--run-dir", "run", cwd=workdir, check=True)
    notes = [line for line in train.stderr.splitlines() if "classification head" in line]
    assert notes == [
        f"note: hf:{workdir / 'bert'}: a new classification head of 2 classes is initialised (classifier.bias, classifier.weight); "
        "training fits it, the rest starts from the saved weights"
    ]
    assert "LOAD REPORT" not in train.stderr and "MISSING" not in train.stderr
    # evaluate rebuilds the model, then loads the run's trained head: nothing about new weights, no load progress.
    proc = run_cli("evaluate", "run", cwd=workdir, check=True)
    out = proc.stdout + proc.stderr
    assert "test/acc" in out
    for noise in ("LOAD REPORT", "newly initialized", "initialised", "Loading weights", "not sharded"):
        assert noise not in out, (noise, out)
    # predict, export, generate and promote share evaluate's loader.
    from taktstock.checkpoint.trained import load_trained_model

    capfd.readouterr()
    model = load_trained_model(workdir / "run").model
    assert capfd.readouterr() == ("", "")
    assert torch.equal(model.classifier.weight, load_file(workdir / "run" / "best.safetensors")["classifier.weight"])


# -- device statistics -----------------------------------------------------------------------------


def test_peak_flops_table_and_flops_per_token() -> None:
    from taktstock.training.device_stats import flops_per_token, peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # the longer, more specific name wins
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops("Some Future GPU") is None
    assert peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500) == 500e12
    assert flops_per_token(1000, 2, 8, 16) == 6 * 1000 + 12 * 2 * 8 * 16
    assert flops_per_token(1000, None, 8, 16) == 6000


def test_device_stats_on_a_faked_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from taktstock.models.gpt import GPT
    from taktstock.training import device_stats

    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: int(2.5 * gib))
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 87)
    model = GPT(vocab_size=64, block_size=16, dim=32, depth=2, heads=2)
    n = sum(p.numel() for p in model.parameters())
    stats = device_stats.DeviceStats(torch.device("cuda", 0), model, {"dim": 32, "depth": 2}, 16, True, world_size=2)
    assert stats.flops_per_token == 6 * n + 12 * 2 * 32 * 16
    got = stats.record(throughput=1e9)
    assert got == {
        "device/mem_allocated_gib": 2.0,
        "device/mem_reserved_gib": 3.0,
        "device/mem_peak_gib": 2.5,
        "device/utilization_pct": 87.0,
        "device/mfu": round(stats.flops_per_token * 1e9 / (2 * 989e12), 4),
    }

    def no_pynvml(device: Any = None) -> int:
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_pynvml)
    classifier = device_stats.DeviceStats(torch.device("cuda", 0), torch.nn.Linear(4, 2), {}, None, False)
    assert classifier.record(500.0) == {"device/mem_allocated_gib": 2.0, "device/mem_reserved_gib": 3.0, "device/mem_peak_gib": 2.5}
    assert device_stats.DeviceStats(torch.device("cpu"), model, {}, 16, True).record(1e9) == {}
