"""Experiment files and overrides: typed values, `config show`, and a clean exit 2 for every mistake."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, run_cli, tiny_config, write_config

from taktstock.config.loader import config_to_yaml, load_config

# Subprocesses use one intra-op thread: tiny models gain nothing from more, and on a busy
# machine two spinning threads per process slow a run down several times.
ONE_THREAD = cli_env(OMP_NUM_THREADS="1")


def cli_inprocess(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`taktstock ARGS` through the real entry point (`cli.main`), in this process: (exit code, stdout, stderr).

    An exception that escapes `main` (a traceback for the user) fails the test by propagating.
    """
    from taktstock import cli

    old_argv = sys.argv
    sys.argv = ["taktstock", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    out, err = capsys.readouterr()
    return code, out, err


def test_overrides_set_nested_typed_values_and_lists(tmp_path: Path) -> None:
    path = write_config(tmp_path / "exp.yaml", tiny_config())
    config = load_config(
        path,
        [
            "train.epochs=5",
            "optim.lr=3e-4",
            "model.hidden=[16, 8]",
            "data.augment.shift=1",
            "train.grad_clip_norm=0.5",
            "experiment.tags.team=vision",
            "train.precision=bf16",
            "early_stopping.enabled=true",
        ],
    )
    assert config.train.epochs == 5 and isinstance(config.train.epochs, int)
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.model.params()["hidden"] == [16, 8]
    assert config.data.augment.shift == 1
    assert config.train.grad_clip_norm == 0.5
    assert config.experiment.tags == {"team": "vision"}
    assert config.train.precision == "bf16"
    assert config.early_stopping.enabled is True
    # Untouched keys keep the file's values.
    assert config.model.params()["dropout"] == 0.1 and config.seed == 1


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path: Path) -> None:
    # YAML 1.1 reads `1e-8` as a string; free optimizer arguments would reach PyTorch as text.
    path = write_config(tmp_path / "exp.yaml", tiny_config())
    path.write_text(path.read_text().replace("lr: 0.003", "lr: 1e-3\n  eps: 1e-7"))
    config = load_config(path, ["optim.weight_decay=5E-4"])
    assert config.optim.lr == 1e-3
    assert config.optim.kwargs() == {"eps": 1e-7}
    assert config.optim.weight_decay == 5e-4
    config = load_config(path, ["optim.eps=1e-8"])
    assert config.optim.kwargs()["eps"] == 1e-8


def test_override_can_switch_model_and_add_its_arguments(tmp_path: Path) -> None:
    # The resolved config holds the MLP's defaults (hidden, activation, batch_norm); switching the
    # model must not drag them along as invalid arguments of the new model.
    config = tiny_config()
    config["model"] = {"name": "mlp"}
    path = write_config(tmp_path / "exp.yaml", config)
    config = load_config(path, ["model.name=resnet", "model.width=8", "model.blocks=[1, 1]"])
    assert config.model.name == "resnet"
    assert config.model.params() == {"blocks": [1, 1], "width": 8, "dropout": 0.0}


def test_override_can_add_arguments_of_a_new_optimizer(tmp_path: Path) -> None:
    path = write_config(tmp_path / "exp.yaml", tiny_config())
    config = load_config(path, ["optim.name=sgd", "optim.momentum=0.9", "optim.nesterov=true"])
    assert config.optim.name == "sgd"
    assert config.optim.kwargs() == {"momentum": 0.9, "nesterov": True}


def test_config_show_prints_the_resolved_config_with_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path / "exp.yaml", tiny_config())
    proc = run_cli("config", "show", str(path), "train.epochs=7", "model.hidden=[12]", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["train"]["epochs"] == 7
    assert shown["model"]["hidden"] == [12]
    # Defaults are filled in: model arguments from the constructor, untouched sections from the schema.
    assert shown["model"]["activation"] == "relu" and shown["model"]["batch_norm"] is False
    assert shown["scheduler"]["name"] == "none" and shown["train"]["batch_size"] == 64
    # What `config show` prints is itself a valid experiment file that resolves to the same config.
    again = load_config(write_config(tmp_path / "shown.yaml", shown))
    assert yaml.safe_load(config_to_yaml(again)) == shown


@pytest.mark.parametrize(
    ("metrics", "mode"),
    [
        ({"monitor": "val/acc"}, "max"),
        ({"monitor": "val/f1"}, "max"),
        ({"monitor": "val/loss"}, "min"),
        ({"monitor": "train/loss"}, "min"),
        ({"monitor": "val/acc", "mode": "min"}, "min"),  # explicit wins
        ({}, "min"),
    ],
)
def test_monitor_mode_defaults_to_the_metrics_direction(tmp_path: Path, metrics: dict[str, str], mode: str) -> None:
    config = tiny_config()
    config["metrics"] = metrics
    assert load_config(write_config(tmp_path / "exp.yaml", config)).metrics.mode == mode


def test_monitor_override_without_mode_follows_the_new_metric(tmp_path: Path) -> None:
    config = tiny_config()
    config["metrics"] = {"monitor": "val/acc"}
    path = write_config(tmp_path / "exp.yaml", config)
    assert load_config(path).metrics.mode == "max"
    assert load_config(path, ["metrics.monitor=val/loss"]).metrics.mode == "min"


def test_default_experiment_file_is_valid() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.data.source == "digits" and config.metrics.monitor == "val/acc"


# (config sections to merge into tiny_config, overrides, fragments the message must contain)
BAD_CONFIGS = {
    "unknown_key": ({"train": {"epoch": 3}}, [], ["train.epoch", "unknown key 'epoch'", "did you mean 'epochs'"]),
    "wrong_type": ({"train": {"epochs": "many"}}, [], ["train.epochs", "'many'"]),
    "negative_batch_size": ({"train": {"batch_size": -8}}, [], ["train.batch_size", "-8"]),
    "zero_lr": ({"optim": {"name": "adamw", "lr": 0}}, [], ["optim.lr", "greater than 0"]),
    "negative_lr_override": ({}, ["optim.lr=-0.1"], ["optim.lr", "greater than 0"]),
    "fractions_sum_to_one": ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, [], ["data", "val_fraction + test_fraction"]),
    "unknown_model": ({"model": {"name": "transformerx"}}, [], ["model.name", "unknown model 'transformerx'", "mlp"]),
    "unknown_model_argument": ({"model": {"name": "mlp", "hiden": [8]}}, [], ["model.hiden", "no argument 'hiden'", "'hidden'"]),
    "model_argument_wrong_type": ({"model": {"name": "mlp", "hidden": "wide"}}, [], ["model.hidden"]),
    "unknown_data_source": ({"data": {"source": "mnist"}}, [], ["data.source", "unknown source 'mnist'", "digits"]),
    "unknown_optimizer": ({"optim": {"name": "adamax2"}}, [], ["optim.name", "unknown optimizer 'adamax2'"]),
    "unknown_optimizer_argument": ({"optim": {"name": "adam", "momentum": 0.9}}, [], ["optim.momentum", "no argument 'momentum'"]),
    "invalid_optimizer_value": ({"optim": {"name": "sgd", "momentum": -1}}, [], ["optim", "momentum"]),
    "fused_without_fused_kernel": ({"optim": {"name": "rmsprop"}}, ["optim.fused=true"], ["optim.fused", "RMSprop has no fused"]),
    "unknown_loss": ({"loss": {"name": "hinge"}}, [], ["loss.name", "unknown loss 'hinge'"]),
    "unknown_scheduler": ({"scheduler": {"name": "linear_decay"}}, [], ["scheduler.name", "linear_decay"]),
    "unknown_monitor": ({"metrics": {"monitor": "val/accuracy"}}, [], ["metrics.monitor", "val/accuracy", "val/acc"]),
    "monitor_of_other_task": ({"loss": {"name": "mse"}}, [], ["metrics.monitor", "val/acc", "val/r2"]),
    "task_contradicts_loss": ({"data": {"source": "digits", "task": "classification"}, "loss": {"name": "l1"}}, [], ["data.task"]),
    "override_unknown_key": ({}, ["train.epoch=3"], ["train.epoch", "did you mean 'epochs'"]),
    "override_unknown_section": ({}, ["trainer.epochs=3"], ["trainer.epochs", "did you mean 'train'"]),
    "override_without_value_syntax": ({}, ["=3"], ["key.path=value"]),
    "bad_device": ({"train": {"device": "tpu"}}, [], ["train.device", "cuda"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_exit_2_naming_the_key_without_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sections, overrides, fragments = BAD_CONFIGS[case]
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "exp.yaml", tiny_config(**sections))
    code, out, err = cli_inprocess(capsys, "config", "show", str(path), *overrides)
    assert code == 2, (out, err)
    assert err.startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_file_errors_name_the_yaml_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("experiment:\n  name: x\ntrain:\n  epochs: 3\n  batch_size: -1\n")
    code, _, err = cli_inprocess(capsys, "config", "show", str(path))
    assert code == 2
    assert f"{path}:5: train.batch_size" in err
    path.write_text("experiment:\n  name: x\nmodel:\n  name: mlp\n  hiden: [8]\n")
    code, _, err = cli_inprocess(capsys, "config", "show", str(path))
    assert code == 2
    assert f"{path}:5: model.hiden: mlp has no argument 'hiden'; did you mean 'hidden'?" in err


def test_missing_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_inprocess(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert err == f"error: config file not found: {tmp_path / 'nope.yaml'}\n"


def test_unreadable_or_non_mapping_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("- train\n- data\n")
    code, _, err = cli_inprocess(capsys, "config", "show", str(path))
    assert code == 2 and "top level must be a mapping" in err
    path.write_bytes(b"train:\n  epochs: \xff\xfe\n")  # not UTF-8
    code, _, err = cli_inprocess(capsys, "config", "show", str(path))
    assert code == 2 and "cannot read the config file" in err


# A few cases through a real subprocess: what the user sees, including the absence of a traceback.
def test_misspelled_section_suggests_the_right_one_in_a_subprocess(tmp_path: Path) -> None:
    config = tiny_config()
    config["trian"] = config.pop("train")
    path = write_config(tmp_path / "exp.yaml", config)
    proc = run_cli("train", str(path), cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "trian: unknown key 'trian'; did you mean 'train'?" in proc.stderr
    assert not (tmp_path / "experiments").exists()  # nothing was created


def test_yaml_syntax_error_names_the_line_in_a_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("experiment:\n  name: x\ntrain:\n  epochs: [1, 2\n  batch_size: 4\n")
    proc = run_cli("config", "show", str(path), cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "YAML syntax error" in proc.stderr and "line 5" in proc.stderr


def test_device_cuda_without_cuda_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # CI has no GPU, so this runs there
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "exp.yaml", tiny_config(train={"epochs": 1, "device": "cuda"}))
    code, _, err = cli_inprocess(capsys, "train", str(path), "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert err == "error: train.device: 'cuda' requested but CUDA is not available (use auto or cpu)\n"
    assert not (tmp_path / "run").exists()
