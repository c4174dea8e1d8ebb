"""A new user's first hour, through the CLI: documented values, overrides, missing extras, paths, help texts.

Each test is one finding of a walk through the README and the guides (issue 18, issue 13 item 5).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, cli_env, run_cli, tiny_config, write_config

ONE_THREAD = cli_env(OMP_NUM_THREADS="1")


def _shown(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _clean_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one-line message of an exit-2 failure (no traceback)."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run, started as a new project's README says: `taktstock train --evaluate` next to ./config.yaml."""
    root = tmp_path_factory.mktemp("project")
    write_config(root / "config.yaml", tiny_config(experiment={"name": "tiny-default"}))
    proc = run_cli("train", "train.epochs=1", "--evaluate", cwd=root, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    return {"root": root, "run": root / run, "proc": proc}


# --- documented values, written unquoted ------------------------------------------------------------


def _choice_fields() -> list[tuple[str, str]]:
    """(dotted key, choice) for every Literal field of the schema."""
    from pydantic import BaseModel

    from taktstock.config.schema import Config

    out: list[tuple[str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if typing.get_origin(ann) is typing.Literal:
                out.extend((prefix + name, c) for c in typing.get_args(ann))
            elif isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")

    walk(Config, "")
    return out


def test_every_choice_value_is_accepted_as_yaml_reads_it_unquoted() -> None:
    # YAML 1.1 turns off/on/yes/no into booleans and 32 into an int: each choice, written bare as the
    # docs write it, must still mean that choice (tune.space dimensions are a dict, checked separately).
    from taktstock.config.loader import yaml_load
    from taktstock.config.schema import Config, TuneParam, coerce_literals

    fields = _choice_fields()
    assert ("train.precision", "32") in fields and ("logging.progress", "off") in fields
    for key, choice in fields:
        section, _, name = key.rpartition(".")
        # As the docs write it: the choice's text, bare (non-string choices such as data.channels' 1 and 3 too).
        raw: dict[str, Any] = {name: yaml_load(str(choice))}
        for part in reversed(section.split(".") if section else []):
            raw = {part: raw}
        node: Any = Config.model_validate(raw)
        for part in key.split("."):
            node = getattr(node, part)
        assert node == choice, (key, choice, yaml_load(str(choice)))
    assert coerce_literals(TuneParam, {"type": "int"})["type"] == "int"


def test_precision_32_and_progress_off_work_unquoted_in_files_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  precision: 32\nlogging:\n  progress: off\n")
    shown = _shown(run_cli("config", "show", str(path), cwd=tmp_path))
    assert (shown["train"]["precision"], shown["logging"]["progress"]) == ("32", "off")
    shown = _shown(run_cli("config", "show", "train.precision=32", "logging.progress=off", cwd=tmp_path))
    assert (shown["train"]["precision"], shown["logging"]["progress"]) == ("32", "off")


# --- overrides: switching model/optimizer, deleting keys, dotted search-space keys ------------------


def test_switching_model_or_optimizer_on_the_command_line_drops_arguments_the_new_class_lacks(tmp_path: Path) -> None:
    config = tiny_config(optim={"name": "sgd", "lr": 0.01, "momentum": 0.9})
    path = write_config(tmp_path / "exp.yaml", config)
    proc = run_cli("config", "show", str(path), "model.name=cnn", "optim.name=adam", cwd=tmp_path)
    shown = _shown(proc)
    assert shown["model"]["name"] == "cnn" and "hidden" not in shown["model"]
    assert shown["model"]["dropout"] == 0.1  # an argument both models take is kept
    assert "momentum" not in shown["optim"] and shown["optim"]["lr"] == 0.01
    assert "dropped model.hidden" in proc.stderr and "dropped optim.momentum" in proc.stderr
    # An argument given on the command line is never dropped: the new class's check names it.
    err = _clean_error(run_cli("config", "show", str(path), "model.name=cnn", "model.hidden=[8]", cwd=tmp_path))
    assert "model.hidden" in err


def test_tilde_override_deletes_a_key_and_a_misspelled_one_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "exp.yaml", tiny_config())
    shown = _shown(run_cli("config", "show", str(path), "~model.dropout", "~train.epochs", cwd=tmp_path))
    assert shown["model"]["dropout"] == 0.0 and shown["train"]["epochs"] == 10  # back to the defaults
    err = _clean_error(run_cli("config", "show", str(path), "~model.dropuot", cwd=tmp_path))
    assert "did you mean 'dropout'" in err


def test_a_search_dimension_is_narrowed_from_the_command_line(tmp_path: Path) -> None:
    # Plain (the key exists in the file), bracketed and quoted spellings of a dotted space key.
    sweep = REPO / "experiments" / "sweep_digits.yaml"
    overrides = ("tune.space.optim.lr.low=2e-4", "tune.space[optim.weight_decay].high=1e-3", 'tune.space."model.dropout".high=0.3')
    space = _shown(run_cli("config", "show", str(sweep), *overrides, cwd=tmp_path))["tune"]["space"]
    assert (space["optim.lr"]["low"], space["optim.weight_decay"]["high"], space["model.dropout"]["high"]) == (2e-4, 1e-3, 0.3)
    assert "optim" not in space and "model" not in space


def test_the_tuning_guides_space_example_runs_against_the_default_mlp(tmp_path: Path) -> None:
    guide = (REPO / "docs" / "tuning.md").read_text()
    block = re.search(r"## The `tune` section\s+```yaml\n(.*?)```", guide, re.S)
    assert block, "docs/tuning.md lost its tune section example"
    config = yaml.safe_load((REPO / "experiments" / "sweep_digits.yaml").read_text())
    config["tune"] = yaml.safe_load(block.group(1))["tune"]
    path = write_config(tmp_path / "sweep.yaml", config)
    args = ("tune", str(path), "--trials", "1", "--out", "sweep", "train.epochs=1", "logging.tensorboard=false", "logging.plots=false")
    proc = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sweep" / "best.yaml").is_file()


# --- optional extras ---------------------------------------------------------------------------------

BLOCKER = """
import importlib.abc, os, sys

BLOCKED = set(os.environ.get("TEST_BLOCK_IMPORTS", "").split(","))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, Blocker())
"""


def _without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing `modules` fails, as if the extra were not installed."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = cli_env(OMP_NUM_THREADS="1", TEST_BLOCK_IMPORTS=",".join(modules))
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return env


def test_commands_name_the_missing_extra_and_create_nothing(tmp_path: Path, trained: dict[str, Any]) -> None:
    run = trained["run"]
    sweep = REPO / "experiments" / "sweep_digits.yaml"
    err = _clean_error(run_cli("tune", str(sweep), "--out", "sweep", cwd=tmp_path, env=_without(tmp_path, "optuna")))
    assert "pip install 'taktstock[tune]'" in err and not (tmp_path / "sweep").exists()
    err = _clean_error(run_cli("promote", str(run), cwd=tmp_path, env=_without(tmp_path, "mlflow")))
    assert "pip install 'taktstock[mlflow]'" in err and not (run / "promotion.json").exists()
    err = _clean_error(run_cli("export", str(run), "--format", "onnx", cwd=tmp_path, env=_without(tmp_path, "onnxruntime")))
    assert "pip install 'taktstock[export]'" in err and not (run / "export").exists()


# --- relative paths ----------------------------------------------------------------------------------


def test_a_missing_relative_data_path_says_what_it_was_resolved_against(tmp_path: Path) -> None:
    (tmp_path / "other" / "dir").mkdir(parents=True)
    config = tiny_config(data={"source": "csv", "path": "data/wine.csv", "target": "y"}, loss={"name": "cross_entropy"})
    path = write_config(tmp_path / "other" / "dir" / "exp.yaml", config)
    err = _clean_error(run_cli("train", str(path), cwd=tmp_path))
    assert "data/wine.csv" in err and f"working directory, {tmp_path}" in err


def test_evaluate_from_another_directory_uses_the_runs_own_data_cache(tmp_path: Path, trained: dict[str, Any]) -> None:
    saved = yaml.safe_load((trained["run"] / "config.yaml").read_text())
    assert saved["data"]["cache_dir"] == str(trained["root"] / "data" / "prepared")  # recorded absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli("evaluate", str(trained["run"]), cwd=elsewhere, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.iterdir()) == []  # no ./data/prepared created here


# --- train without a config file -----------------------------------------------------------------------


def test_train_without_a_file_uses_config_yaml_and_evaluate_reports_the_run_once(trained: dict[str, Any]) -> None:
    proc = trained["proc"]
    assert "using ./config.yaml" in proc.stderr
    assert yaml.safe_load((trained["run"] / "config.yaml").read_text())["experiment"]["name"] == "tiny-default"
    assert proc.stdout.count("run directory:") == 1


def test_train_without_a_file_or_config_yaml_is_a_one_line_error(tmp_path: Path) -> None:
    err = _clean_error(run_cli("train", "train.epochs=1", cwd=tmp_path))
    assert "config.yaml" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "experiments").exists()


# --- pipelines take overrides ----------------------------------------------------------------------------


def test_pipeline_generators_pass_overrides_to_their_stages(tmp_path: Path) -> None:
    write_config(tmp_path / "c.yaml", tiny_config())
    proc = run_cli("pipeline", "dvc", "c.yaml", "train.epochs=3", "--out", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stages = yaml.safe_load(proc.stdout)["stages"]
    assert "train.epochs=3" in stages["train"]["cmd"] and "train.epochs=3" in stages["prepare"]["cmd"]
    proc = run_cli("pipeline", "airflow", "c.yaml", "experiment.name=nightly", "train.epochs=3", "--out", "dags", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dag = (tmp_path / "dags" / "taktstock_nightly.py").read_text()
    assert "experiment.name=nightly train.epochs=3" in dag
    assert "'trian'" in _clean_error(run_cli("pipeline", "dvc", "c.yaml", "trian.epochs=3", cwd=tmp_path))


# --- DVC at the repository root and in a new project -------------------------------------------------------


def test_dvc_at_the_repository_root_does_not_read_the_project_template() -> None:
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "stage", "list", "--all"], cwd=REPO, capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "templates" not in proc.stdout + proc.stderr


def test_a_new_projects_pipeline_metrics_are_committed_so_experiments_compare(tmp_path: Path) -> None:
    run_cli("new", "proj", cwd=tmp_path, check=True)
    project = tmp_path / "proj"
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    uncached = [
        path
        for stage in stages.values()
        for kind in ("outs", "metrics")
        for entry in stage.get(kind, [])
        if isinstance(entry, dict)
        for path, opts in entry.items()
        if opts.get("cache") is False
    ]
    assert any(p.endswith("eval/metrics.json") for p in uncached)
    ignored = subprocess.run(["git", "check-ignore", *uncached], cwd=project, capture_output=True, text=True)
    assert ignored.stdout == "", f"git ignores DVC's uncached outputs: {ignored.stdout}"


# --- Ray Tune ----------------------------------------------------------------------------------------------


# Finding 4 (Ray's grace period with tune.warmup_epochs > train.epochs) is checked by
# tests/test_tune.py::test_ray_tune_backend_small_search: one Ray start-up instead of two.


# --- help, runs, compare ----------------------------------------------------------------------------------


def test_help_shows_no_value_for_flags_and_plain_names_for_arguments() -> None:
    train = run_cli("train", "--help", env=cli_env(COLUMNS="120"))
    assert "--evaluate" in train.stdout and "<bool>" not in train.stdout
    evaluate = run_cli("evaluate", "--help", env=cli_env(COLUMNS="120"))
    assert "RUN_DIR" in evaluate.stdout and "{run_dir}" not in evaluate.stdout


def test_runs_shows_a_killed_runs_checkpointed_steps_and_best(tmp_path: Path) -> None:
    config = tiny_config(train={"epochs": 400, "batch_size": 64, "log_every_n_steps": 5}, checkpoint={"every_n_steps": 5})
    write_config(tmp_path / "c.yaml", config)
    cmd = [sys.executable, "-m", "taktstock", "train", "c.yaml", "--run-dir", "runs/killed"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        # Killed once a checkpoint covers a validation: `runs` reports the best value logged up to the newest
        # checkpoint (what --resume keeps), so a kill between a validation and the next checkpoint has none.
        while not _checkpoint_after_a_validation(tmp_path / "runs/killed"):
            assert time.time() < deadline and proc.poll() is None, "the run ended before a checkpoint"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = json.loads(run_cli("runs", "runs", "--json", cwd=tmp_path, check=True).stdout)
    (row,) = rows
    step = json.loads((tmp_path / "runs/killed/checkpoints/last.json").read_text())["step"]
    assert row["status"] == "interrupted" and row["steps"] == step and row["best"] is not None


def _checkpoint_after_a_validation(run: Path) -> bool:
    try:
        last = json.loads((run / "checkpoints/last.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return False
    lines = _text(run / "metrics.jsonl").splitlines()[:-1]  # the last line may be half written
    return any(r.get("step", last + 1) <= last for r in map(json.loads, lines) if "val/acc" in r)


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_compare_with_an_unknown_metric_lists_only_curves(tmp_path: Path, trained: dict[str, Any]) -> None:
    err = _clean_error(run_cli("compare", str(trained["run"]), str(trained["run"]), "--metric", "nope", cwd=tmp_path))
    curves = err.partition("curves: ")[2]
    assert "val/acc" in curves and "best" not in curves and "test/" not in curves


def test_optunas_retry_callback_is_made_without_a_deprecation_warning() -> None:
    code = "from taktstock.tuning.study import retry_callback; retry_callback()"
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- a walk of the guides on today's main (docs/*.md) -----------------------------------------------------


def test_torchscript_export_prints_no_deprecation_warnings(tmp_path: Path, trained: dict[str, Any]) -> None:
    # PyTorch 2.14 warns four times (trace, trace_method, save, load) that TorchScript is deprecated.
    out = tmp_path / "model.pt"
    proc = run_cli("export", str(trained["run"]), "--format", "torchscript", "--out", str(out), cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "Warning" not in proc.stderr, proc.stderr


def test_a_missing_date_written_nat_is_a_gap_for_predict_and_promote_registers_the_table_model_quietly(tmp_path: Path) -> None:
    # pandas writes a missing timestamp as "NaT", and so does MLflow's JSON serving input made from the registered
    # table model's input example: `promote` printed "Failed to validate serving input example ... 'NaT'".
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 120
    label = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "size": label * 2.0 + rng.normal(0, 0.5, n),
            "seen": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400, n), unit="D"),
            "label": np.where(label == 1, "big", "small"),
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    config = tiny_config(data={"source": "parquet", "path": "t.parquet", "target": "label"}, train={"epochs": 1, "batch_size": 32})
    write_config(tmp_path / "c.yaml", config)
    assert run_cli("train", "c.yaml", "--run-dir", "run", cwd=tmp_path, env=ONE_THREAD).returncode == 0
    rows = "size,seen\n1.5,2024-03-01\n0.1,NaT\n"
    (tmp_path / "rows.csv").write_text(rows)
    proc = run_cli("predict", "run", "rows.csv", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 3  # header and two predictions
    # The registered pyfunc: its input example (a row of gaps) passes MLflow's serving check; the model is stored as
    # code, not pickled (MLflow warns about CloudPickle otherwise); no artifact progress bars in the log.
    proc = run_cli("promote", "run", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "promoted to champion" in log
    for noise in ("Failed to validate serving input example", "CloudPickle", "Downloading artifacts"):
        assert noise not in log, log


TEXT_LABELS = '''
import csv

import numpy as np
from torch.utils.data import Dataset


class Rows(Dataset):
    """docs/custom-code.md's "Predicting on raw rows" dataset: items are (features, "class name")."""

    def __init__(self, path: str = "rows.csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.x, self.labels = self.features(rows), [r["label"] for r in rows]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]

    def features(self, rows):
        return np.array([[float(r["a"]), float(r["b"])] for r in rows], dtype=np.float32)
'''


def test_a_user_dataset_whose_items_have_text_labels_trains_and_predicts(tmp_path: Path) -> None:
    # The guide says class labels may be strings; an item `(x, "big")` was a traceback (torch.as_tensor of a str).
    (tmp_path / "textlabels.py").write_text(TEXT_LABELS)
    lines = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'big' if i % 7 > 3 else 'small'}" for i in range(90)]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(data={"source": "textlabels:Rows"}, train={"epochs": 1, "batch_size": 16})
    write_config(tmp_path / "c.yaml", config)
    proc = run_cli("train", "c.yaml", "--run-dir", "run", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "preprocessing.json").read_text())["class_names"] == ["big", "small"]
    out = run_cli("predict", "run", "rows.csv", cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr
    predicted = [line.split(",")[0] for line in out.stdout.strip().splitlines()[1:]]
    assert len(predicted) == 90 and set(predicted) <= {"big", "small"}
    regression = run_cli("train", "c.yaml", "loss.name=mse", "metrics.monitor=val/loss", cwd=tmp_path, env=ONE_THREAD)
    assert "text targets" in _clean_error(regression)


@pytest.mark.timeout(600)
def test_dvc_repro_runs_in_a_new_project_and_exp_show_has_its_test_metrics(tmp_path: Path) -> None:
    # The template's prepare stage declared data/prepared, which a Dataset class never writes (nothing is cached):
    # `dvc repro` failed with "output 'data/prepared' does not exist" in every `taktstock new` project.
    run_cli("new", "proj", cwd=tmp_path, check=True)
    project = tmp_path / "proj"
    config = project / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 30", "epochs: 1"))
    dvc = str(Path(sys.executable).parent / "dvc")
    env = cli_env(OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the stages' `python`
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"]
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], ["git", "add", "-A"], commit):  # exp show needs a commit
        subprocess.run(cmd, cwd=project, env=env, check=True, timeout=120)
    proc = subprocess.run([dvc, "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shown = subprocess.run([dvc, "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert '"test/acc": ' in shown.stdout, shown.stdout[-2000:] + shown.stderr
