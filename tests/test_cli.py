"""End to end through the command line, as a user runs it: train, evaluate, the run directory, entry points."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, run_cli, tiny_config, write_config
from test_config import cli_inprocess

PNG = b"\x89PNG\r\n\x1a\n"

# Subprocesses use one intra-op thread: tiny models gain nothing from more, and on a busy
# machine two spinning threads per process slow a run down several times.
ONE_THREAD = cli_env(OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The default experiment (config.yaml), trained and evaluated once: `taktstock train config.yaml --evaluate`."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "config.yaml", project / "config.yaml")
    proc = run_cli("train", "config.yaml", "--evaluate", "--run-dir", "run", cwd=project, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    return project, proc


def test_default_experiment_reaches_95_percent_test_accuracy(default_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    project, proc = default_run
    result = json.loads((project / "run" / "eval" / "metrics.json").read_text())
    assert result["split"] == "test" and result["checkpoint"] == "best"
    assert result["metrics"]["test/acc"] >= 0.95
    assert "run directory: run" in proc.stdout


def test_train_writes_the_documented_run_directory(default_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run = default_run[0] / "run"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "preprocessing.json", "model.safetensors", "best.safetensors"):
        assert (run / name).is_file(), name
    ckpts = run / "checkpoints"
    for name in ("last.pt", "last.json", "best.pt", "best.json"):
        assert (ckpts / name).is_file(), name
    assert list(ckpts.glob("step-*.pt"))
    assert list(run.glob("events.out.tfevents.*"))  # in the run directory: TensorBoard names the run after it
    assert (run / "plots" / "learning_curves.png").read_bytes().startswith(PNG)
    assert (run / "eval" / "confusion_matrix.png").read_bytes().startswith(PNG)
    report = json.loads((run / "eval" / "report.json").read_text())
    assert sorted(report) == [str(i) for i in range(10)]
    assert sum(c["support"] for c in report.values()) == 270  # the whole test split
    assert all(0.0 <= c["f1"] <= 1.0 for c in report.values())
    # The saved config is the resolved one and trains the same experiment again.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["hidden"] == [256, 128] and saved["train"]["batch_size"] == 64
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["monitor"] == "val/acc"


def test_evaluate_entry_point_on_val_split_with_last_weights(default_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    project = default_run[0]
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "run", "--split", "val", "--checkpoint", "last"],
        cwd=project,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((project / "run" / "eval" / "metrics.json").read_text())
    assert result["split"] == "val" and result["checkpoint"] == "last"
    # The last validation during training used the final weights: the same numbers.
    last_val = [r for r in map(json.loads, (project / "run" / "metrics.jsonl").read_text().splitlines()) if "val/acc" in r][-1]
    assert result["metrics"]["val/acc"] == pytest.approx(last_val["val/acc"], abs=1e-6)
    assert result["metrics"]["val/loss"] == pytest.approx(last_val["val/loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "holdout"], "--split: expected train, val or test, got 'holdout'"),
        (["--checkpoint", "middle"], "--checkpoint: expected best or last, got 'middle'"),
    ],
)
def test_evaluate_bad_options_are_exit_2(
    default_run: tuple[Path, subprocess.CompletedProcess[str]], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = cli_inprocess(capsys, "evaluate", str(default_run[0] / "run"), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_evaluate_of_a_directory_that_is_no_run_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_inprocess(capsys, "evaluate", str(tmp_path))
    assert code == 2 and f"not a run directory (no config.yaml): {tmp_path}" in err


def test_train_entry_point_with_overrides_default_run_directory_and_evaluate_without_test_split(tmp_path: Path) -> None:
    path = write_config(tmp_path / "exp.yaml", tiny_config(experiment={"name": "tiny", "output_dir": "out"}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "exp.yaml", "train.epochs=1", "--evaluate", "model.hidden=[16]", "data.test_fraction=0"],
        cwd=tmp_path,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "out").glob("tiny-*"))
    assert len(runs) == 1
    assert f"run directory: {Path('out') / runs[0].name}" in proc.stdout
    saved = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["model"]["hidden"] == [16]
    assert (runs[0] / "model.safetensors").is_file()
    # --evaluate without a test split evaluates the validation split.
    assert json.loads((runs[0] / "eval" / "metrics.json").read_text())["split"] == "val"
    assert path.is_file()
