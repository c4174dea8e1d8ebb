"""Resume continuity across MLflow/W&B/TensorBoard, W&B offline, histograms, runs/compare, missing extras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env, require, run_cli, tiny_config, write_config

from taktstock.tracking.jsonl import read_metrics

KILL_CALLBACK = '''
import os, signal

class KillAt:
    """SIGKILLs its own training process after the MLflow run has received every point logged so far."""
    def on_step_end(self, trainer):
        if trainer.state.step == int(os.environ["KILL_AT_STEP"]):
            for t in trainer.p.trackers.trackers:
                if t.name == "mlflow":
                    t.writer.flush()
            os.kill(os.getpid(), signal.SIGKILL)
'''


def _tb_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def _wandb_history(offline_dir: Path) -> list[dict]:
    from taktstock.tracking.wandb import offline_history

    (log,) = offline_dir.glob("run-*.wandb")
    return list(offline_history(log))


def test_resume_after_sigkill_continues_the_same_mlflow_wandb_and_tensorboard_runs(workdir: Path) -> None:
    require("mlflow")
    require("wandb")
    from mlflow.tracking import MlflowClient

    (workdir / "killer.py").write_text(KILL_CALLBACK)
    cfg = tiny_config(
        logging={"tensorboard": True, "plots": False, "mlflow": {"enabled": True, "log_model": False}, "wandb": {"enabled": True}},
        train={"epochs": 2, "log_every_n_steps": 1, "callbacks": ["killer:KillAt"]},
        checkpoint={"every_n_steps": 5, "keep_last": 20},
    )
    write_config(workdir / "exp.yaml", cfg)
    killed = run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir, env=cli_env(KILL_AT_STEP="13"))
    assert killed.returncode == -9, killed.stderr
    before = json.loads((workdir / "run" / "run.json").read_text())
    # run.json still says "running" (SIGKILL gave no chance to record the end); `runs` knows better.
    assert before["status"] == "running"
    listed = json.loads(run_cli("runs", ".", "--json", cwd=workdir, check=True).stdout)
    assert [(r["run"], r["status"]) for r in listed] == [("run", "interrupted")]
    client = MlflowClient(before["mlflow"]["tracking_uri"])
    run_id = before["mlflow"]["run_id"]
    # the killed attempt logged steps 11 and 12 after its last checkpoint (step 10)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss_step")] == list(range(1, 13))

    run_cli("train", "--resume", "run", "train.callbacks=[]", cwd=workdir, check=True)
    after = json.loads((workdir / "run" / "run.json").read_text())
    assert after["status"] == "completed"
    assert [r["status"] for r in json.loads(run_cli("runs", ".", "--json", cwd=workdir, check=True).stdout)] == ["completed"]
    steps = after["steps"]
    records = read_metrics(workdir / "run" / "metrics.jsonl")
    expected = [(r["step"], r["train/loss_step"]) for r in records if "train/loss_step" in r]
    assert [s for s, _ in expected] == list(range(1, steps + 1))

    # MLflow: the same run, every step exactly once, values equal to the local log
    assert after["mlflow"]["run_id"] == run_id
    assert len(client.search_runs([before["mlflow"]["experiment_id"]])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss_step"))
    assert history == expected

    # W&B: a second offline directory of the same run id, continuing after the checkpoint
    first, second = _wandb_runs(workdir / "run")
    wandb_id = after["wandb"]["run_id"]
    assert before["wandb"]["run_id"] == wandb_id
    assert first.name.endswith(wandb_id) and second.name.endswith(wandb_id)
    resumed = [(row["_step"], row["train/loss_step"]) for row in _wandb_history(second) if "train/loss_step" in row]
    assert resumed == expected[10:]
    killed_rows = [row["_step"] for row in _wandb_history(first) if "train/loss_step" in row]
    assert killed_rows == list(range(1, len(killed_rows) + 1)) and len(killed_rows) <= 12

    # TensorBoard: purge_step drops the killed attempt's events after the checkpoint: one continuous curve
    scalars = [(e.step, e.value) for e in _tb_events(workdir / "run").Scalars("train/loss_step")]
    assert scalars == [(s, float(np.float32(v))) for s, v in expected]


def test_wandb_offline_run_and_tensorboard_histograms_hold_the_logged_metrics(workdir: Path) -> None:
    require("wandb")
    cfg = tiny_config(
        logging={"tensorboard": True, "histogram_every_n_steps": 4, "plots": False, "wandb": {"enabled": True, "mode": "auto"}},
        train={"epochs": 1, "max_steps": 12, "log_every_n_steps": 3},
    )
    write_config(workdir / "exp.yaml", cfg)
    env = cli_env()
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_API_KEY", None)
    env["HOME"] = str(workdir)  # no ~/.netrc: no API key, so 'auto' must mean offline
    run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir, env=env, check=True)
    info = json.loads((workdir / "run" / "run.json").read_text())
    assert info["wandb"]["mode"] == "offline"
    (offline,) = _wandb_runs(workdir / "run")
    assert offline.name.endswith(info["wandb"]["run_id"])
    rows = _wandb_history(offline)
    records = read_metrics(workdir / "run" / "metrics.jsonl")
    for record in records:
        logged = [row for row in rows if row["_step"] == record["step"]]
        merged = {k: v for row in logged for k, v in row.items() if not k.startswith("_")}
        assert {k: merged[k] for k in record if k not in ("step", "epoch")} == {
            k: v for k, v in record.items() if k not in ("step", "epoch")
        }

    acc = _tb_events(workdir / "run")
    tags = acc.Tags()["histograms"]
    weights = sorted(t for t in tags if t.startswith("weights/"))
    grads = sorted(t for t in tags if t.startswith("grads/"))
    assert weights and [t.removeprefix("grads/") for t in grads] == [t.removeprefix("weights/") for t in weights]
    for tag in weights + grads:
        assert [e.step for e in acc.Histograms(tag)] == [4, 8, 12]


def test_runs_lists_and_compare_diffs_real_run_directories(workdir: Path) -> None:
    base = tiny_config(train={"epochs": 1, "max_steps": 6, "log_every_n_steps": 2}, experiment={"name": "cmp", "output_dir": "out"})
    write_config(workdir / "exp.yaml", base)
    run_cli("train", "exp.yaml", "--run-dir", "out/a", cwd=workdir, check=True)
    run_cli("train", "exp.yaml", "--run-dir", "out/b", "optim.lr=0.01", "--evaluate", cwd=workdir, check=True)

    listed = run_cli("runs", "out", "--json", cwd=workdir, check=True)
    rows = json.loads(listed.stdout)
    assert [r["run"] for r in rows] == ["a", "b"]
    for r in rows:
        info = json.loads((workdir / "out" / r["run"] / "run.json").read_text())
        assert (r["status"], r["monitor"], r["best"], r["steps"]) == ("completed", "val/acc", info["best"], 6)
        assert r["duration_s"] == round(info["ended"] - info["started"], 1)
    table = run_cli("runs", "out", cwd=workdir, check=True).stdout
    assert "completed" in table and "val/acc" in table and f"{rows[1]['best']:.4g}" in table

    out = run_cli("compare", "out/a", "out/b", "--out", "cmp.png", cwd=workdir, check=True).stdout
    diff_section = out.split("final metrics")[0]
    assert "optim.lr" in diff_section and "0.003" in diff_section and "0.01" in diff_section
    assert "train.epochs" not in diff_section  # equal keys are not listed
    test_acc = json.loads((workdir / "out" / "b" / "eval" / "metrics.json").read_text())["metrics"]["test/acc"]
    line = next(ln for ln in out.splitlines() if "test/acc" in ln)
    assert f"{test_acc:.4g}" in line and "-" in line  # run a was not evaluated
    import matplotlib.image

    image = matplotlib.image.imread(workdir / "cmp.png")
    assert image.ndim == 3 and image.shape[0] > 100

    bad = run_cli("compare", "out/a", "nowhere", cwd=workdir)
    assert bad.returncode == 2 and "nowhere" in bad.stderr and "Traceback" not in bad.stderr


def test_runs_tells_a_live_run_from_a_killed_one(tmp_path: Path) -> None:
    import subprocess

    from taktstock.tracking.runs import list_runs
    from taktstock.utils.process import this_process

    gone = subprocess.Popen(["true"])
    gone.wait()
    for name, process in {"live": this_process(), "killed": this_process() | {"pid": gone.pid}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"status": "running", "started": 1.0, "process": process}))
    reused = this_process() | {"start": this_process()["start"] - 1}  # our pid, but another process's start time
    (tmp_path / "reused").mkdir()
    (tmp_path / "reused" / "run.json").write_text(json.dumps({"status": "running", "started": 2.0, "process": reused}))
    elsewhere = this_process() | {"host": "another-host", "pid": gone.pid}  # cannot be checked from here
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "run.json").write_text(json.dumps({"status": "running", "started": 3.0, "process": elsewhere}))
    statuses = {r["run"]: r["status"] for r in list_runs(tmp_path)}
    assert statuses == {"live": "running", "killed": "interrupted", "reused": "interrupted", "elsewhere": "running"}


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_enabled_backend_without_its_package_names_the_pip_extra(backend: str, workdir: Path) -> None:
    fake = workdir / "fake"
    (fake / backend).mkdir(parents=True)
    (fake / backend / "__init__.py").write_text(f'raise ImportError("No module named {backend}")\n')
    cfg = tiny_config(logging={"tensorboard": False, "plots": False, backend: {"enabled": True}}, train={"epochs": 1, "max_steps": 2})
    write_config(workdir / "exp.yaml", cfg)
    result = run_cli("train", "exp.yaml", "--run-dir", "run", cwd=workdir, env=cli_env(PYTHONPATH=f"{fake}:{REPO}"))
    assert result.returncode == 2
    assert f"pip install 'taktstock[{backend}]'" in result.stderr and "Traceback" not in result.stderr
