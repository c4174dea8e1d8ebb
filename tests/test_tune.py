"""`taktstock tune`: search, pruning, outputs, resume after a kill, parallel workers (embedded and PostgreSQL), Ray Tune."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli_env, run_cli, skip_unless_ci, tiny_config, write_config

SPACE = {
    "optim.lr": {"type": "float", "low": 1.0e-5, "high": 0.1, "log": True},
    "model.hidden": {"type": "categorical", "choices": [[16], [32]]},
}


def sweep_config(**tune: object) -> dict:
    """Tiny trials: digits, one hidden layer of 16, 3 epochs of 10 steps."""
    return tiny_config(
        model={"name": "mlp", "hidden": [16], "dropout": 0.0},
        train={"epochs": 3, "batch_size": 128, "log_every_n_steps": 5},
        checkpoint={"every_n_steps": None},
        tune={"trials": 4, "startup_trials": 2, "warmup_epochs": 1, "space": SPACE} | tune,
    )


def read_trials(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def validations(run_dir: str) -> int:
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return sum(1 for line in lines if "val/acc" in json.loads(line))


def test_study_prunes_writes_outputs_and_best_yaml_reproduces_best_score(workdir: Path) -> None:
    cfg = write_config(workdir / "sweep.yaml", sweep_config(trials=6))
    proc = run_cli("tune", str(cfg), "--out", "sweep", cwd=workdir, check=True)
    assert "best trial" in proc.stdout
    rows = read_trials(workdir / "sweep")
    assert [int(r["number"]) for r in rows] == list(range(6))
    states = [r["state"] for r in rows]
    assert set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states and "COMPLETE" in states
    for r in rows:  # a pruned trial stopped early; a complete one validated after every epoch
        assert validations(r["run_dir"]) == (3 if r["state"] == "COMPLETE" else int(r["validations"]))
        if r["state"] == "PRUNED":
            assert validations(r["run_dir"]) < 3
            assert json.loads(Path(r["run_dir"], "run.json").read_text())["tune_state"] == "PRUNED"
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["value"]))
    best_yaml = yaml.safe_load((workdir / "sweep" / "best.yaml").read_text())
    trial_cfg = yaml.safe_load(Path(best["run_dir"], "config.yaml").read_text())
    assert best_yaml == trial_cfg
    assert best_yaml["optim"]["lr"] == float(best["optim.lr"])
    assert (workdir / "sweep" / "plots" / "optimization_history.png").stat().st_size > 0
    # The best config trains to exactly the best trial's monitored value.
    run_cli("train", "sweep/best.yaml", "--run-dir", "again", cwd=workdir, check=True)
    assert json.loads((workdir / "again" / "run.json").read_text())["best"] == float(best["value"])


def test_killed_study_resumes_with_the_remaining_trials_and_no_duplicate_numbers(workdir: Path) -> None:
    raw = sweep_config(trials=4, pruner="none")
    # Long enough trials (~200 steps) that the kill, sent when trial 1 logs its first line, lands inside it.
    raw["train"]["epochs"] = 20
    cfg = write_config(workdir / "sweep.yaml", raw)
    args = [sys.executable, "-m", "taktstock", "tune", str(cfg), "--out", "sweep"]
    proc = subprocess.Popen(args, cwd=workdir, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (workdir / "sweep" / "trials" / "trial-0001" / "metrics.jsonl").exists():
            assert proc.poll() is None and time.time() < deadline, "the sweep ended or hung before trial 1 started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    out = run_cli("tune", str(cfg), "--out", "sweep", cwd=workdir, check=True)
    assert "trial 1 was interrupted" in out.stdout
    rows = read_trials(workdir / "sweep")
    numbers = [int(r["number"]) for r in rows]
    assert numbers == list(range(len(numbers)))
    interrupted = [r for r in rows if r["state"] == "FAIL"]
    assert [int(r["number"]) for r in interrupted] == [1] and "interrupted" in interrupted[0]["reason"]
    finished = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(finished) == 4 and len(rows) == 5
    # The interrupted trial was re-run with the same parameters.
    assert any(r["optim.lr"] == interrupted[0]["optim.lr"] and r["model.hidden"] == interrupted[0]["model.hidden"] for r in finished)
    # Re-running a finished study runs nothing.
    again = run_cli("tune", str(cfg), "--out", "sweep", cwd=workdir, check=True)
    assert "nothing to run" in again.stdout and len(read_trials(workdir / "sweep")) == 5


# taktstock.tuning.optuna_backend.trial_line, as a worker prints it for each trial it finished.
TRIAL_LINE = re.compile(r"^trial (\d+) (?:COMPLETE|PRUNED)\b", re.M)


def _check_two_worker_sweep(sweep: Path, trials: int) -> None:
    rows = read_trials(sweep)
    assert sorted(int(r["number"]) for r in rows) == list(range(trials))
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    # Both worker processes ran trials, each its own: the report line a worker prints on stdout for every trial it
    # finished (the log also holds its stderr, whose warnings could mention a "trial " too).
    ran = [{int(n) for n in TRIAL_LINE.findall((sweep / "logs" / f"worker-{i}.log").read_text())} for i in (0, 1)]
    assert ran[0] and ran[1] and not ran[0] & ran[1] and ran[0] | ran[1] == set(range(trials)), ran
    assert (sweep / "best.yaml").exists()


def test_two_workers_share_the_embedded_storage(workdir: Path) -> None:
    cfg = write_config(workdir / "sweep.yaml", sweep_config(trials=4))
    run_cli("tune", str(cfg), "--workers", "2", "--out", "sweep", cwd=workdir, check=True)
    _check_two_worker_sweep(workdir / "sweep", 4)


@pytest.fixture
def postgres_url() -> str:
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not os.environ.get("PG_BIN"):
        skip_unless_ci("PostgreSQL binaries not installed (apt-get install postgresql; .ci/run installs them)")
    out = subprocess.run(["bash", str(REPO / "scripts" / "pg_start.sh")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.strip().splitlines() if "=" in line)
    try:
        yield env["PG_URL"]
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "pg_stop.sh"), env["PG_DIR"], env["PG_PID"]], timeout=120)


def test_two_workers_share_a_postgresql_study(workdir: Path, postgres_url: str) -> None:
    import optuna

    cfg = write_config(workdir / "sweep.yaml", sweep_config(trials=4))
    run_cli("tune", str(cfg), "--workers", "2", "--storage", postgres_url, "--study", "pg", "--out", "sweep", cwd=workdir, check=True)
    _check_two_worker_sweep(workdir / "sweep", 4)
    assert not (workdir / "sweep" / "study.journal").exists()
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]


def test_ray_tune_backend_small_search(workdir: Path) -> None:
    # tune.warmup_epochs beyond train.epochs (issue 18, finding 4): ASHA's grace period is clamped with a note, not
    # Ray's "grace_period must be <= max_t" assertion. (One test: each Ray start-up costs about a minute here.)
    cfg = write_config(workdir / "sweep.yaml", sweep_config(trials=3, warmup_epochs=5))
    proc = run_cli("tune", str(cfg), "--backend", "ray", "--workers", "2", "--out", "sweep", cwd=workdir, check=True, timeout=400)
    assert "grace period is 3" in proc.stderr, proc.stderr[-3000:]
    rows = read_trials(workdir / "sweep")
    assert sorted(int(r["number"]) for r in rows) == [0, 1, 2]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"} and "COMPLETE" in {r["state"] for r in rows}, rows
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    assert yaml.safe_load((workdir / "sweep" / "best.yaml").read_text()) == yaml.safe_load(Path(best["run_dir"], "config.yaml").read_text())
    assert (workdir / "sweep" / "ray" / "tune").is_dir()


SLOW_VALIDATION = """
import time


class Slow:
    def on_validation_end(self, trainer, metrics):
        time.sleep(1.0)  # long enough for the sweep's prune signal to land mid-run
"""


def test_each_trial_can_be_a_multi_process_torchrun_run_and_be_pruned(workdir: Path) -> None:
    from taktstock.checkpoint.manager import load_checkpoint

    (workdir / "slow.py").write_text(SLOW_VALIDATION)
    # Grid over a good and a hopeless learning rate: with seed 5 the grid sampler runs the good one first,
    # so the median pruner stops the second at its second validation.
    space = {"optim.lr": {"type": "categorical", "choices": [0.01, 1.0e-7]}}
    raw = sweep_config(trials=2, startup_trials=1, sampler="grid", space=space) | {"seed": 5}
    raw["train"] |= {"epochs": 3, "callbacks": ["slow:Slow"]}
    cfg = write_config(workdir / "sweep.yaml", raw)
    run_cli("tune", str(cfg), "--nproc-per-trial", "2", "--out", "sweep", cwd=workdir, check=True, timeout=400)
    rows = read_trials(workdir / "sweep")
    assert [(int(r["number"]), r["state"], float(r["optim.lr"])) for r in rows] == [(0, "COMPLETE", 0.01), (1, "PRUNED", 1.0e-7)]
    for r in rows:
        run_dir = Path(r["run_dir"])
        # Every rank trained the sampled configuration the sweep wrote down, as one 2-process run.
        assert yaml.safe_load((run_dir / "trial.yaml").read_text()) == yaml.safe_load((run_dir / "config.yaml").read_text())
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == float(r["optim.lr"])
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["world_size"] == 2
    complete, pruned = (json.loads((Path(r["run_dir"]) / "run.json").read_text()) for r in rows)
    assert complete["status"] == "completed" and complete["best"] == float(rows[0]["value"]) and validations(rows[0]["run_dir"]) == 3
    # Pruned at its second validation: the sweep sent SIGTERM, both ranks checkpointed at one step and stopped.
    assert pruned["status"] == "preempted" and validations(rows[1]["run_dir"]) == 2 == int(rows[1]["validations"])


@pytest.mark.parametrize(("status", "state", "value"), [("completed", "COMPLETE", 0.9), ("preempted", "PRUNED", 0.5)])
def test_a_prune_signal_that_lands_after_the_run_finished_leaves_the_trial_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str, state: str, value: float
) -> None:
    from taktstock.config.loader import validate
    from taktstock.tuning.objective import run_trial_processes

    class Torchrun:
        """Stand-in for the torchrun process: its run is on disk by the sweep's first look (a fast trial)."""

        def __init__(self, cmd: list[str], **_: object) -> None:
            run_dir = Path(cmd[cmd.index("--run-dir") + 1])
            done = [0.5, 0.4, 0.9] if status == "completed" else [0.5, 0.4]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "val/acc": v}) + "\n" for i, v in enumerate(done)))
            (run_dir / "run.json").write_text(json.dumps({"status": status, "best": max(done[:2]) if status != "completed" else max(done)}))
            self.returncode, self.signals = -signal.SIGTERM, []  # torchrun reports the prune signal either way

        def poll(self) -> int:
            return self.returncode

        def send_signal(self, sig: int) -> None:
            self.signals.append(sig)

    monkeypatch.setattr(subprocess, "Popen", Torchrun)
    reported: list[tuple[int, float]] = []

    def report(v: float, index: int) -> bool:
        reported.append((index, v))
        return index >= 1  # the pruner says stop from the second validation on

    config = validate(tiny_config(), {}, "<test>")
    outcome = run_trial_processes(config, tmp_path / "trial", report, nproc=2, poll_s=0.01)
    assert (outcome.state, outcome.value) == (state, value)
    # Every validation the run logged is reported, also those after the prune decision.
    assert reported == [(0, 0.5), (1, 0.4), (2, 0.9)][: 3 if status == "completed" else 2]


def test_bad_search_space_is_a_clear_error_before_any_trial(workdir: Path) -> None:
    space = {"optim.lrr": {"type": "float", "low": 0.001, "high": 0.1}}
    cfg = write_config(workdir / "sweep.yaml", sweep_config(space=space))
    proc = run_cli("tune", str(cfg), "--out", "sweep", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    assert "tune.space.optim.lrr: unknown config key ('lrr' is not in optim); did you mean 'optim.lr'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "sweep").exists()


@pytest.mark.parametrize(
    ("space", "sampler", "message"),
    [
        ({"optim.lr": {"type": "float", "low": 0.1, "high": 0.001}}, "tpe", "low (0.1) > high (0.001)"),
        ({"optim.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "tpe", "log scale needs low > 0"),
        ({"model.hidden": {"type": "categorical"}}, "tpe", "needs a non-empty 'choices'"),
        ({"train.batch_size": {"type": "int", "low": 8.5, "high": 64}}, "tpe", "integer low"),
        ({"train.batch_size": {"type": "int", "low": 0, "high": 64}}, "tpe", "value 0 gives an invalid config"),
        ({"optim.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "step": 0.01}}, "tpe", "cannot be combined"),
        ({"optim.lr": {"type": "float", "low": 0.001, "high": 0.1}}, "grid", "grid sampler needs a finite dimension"),
        ({"tune.trials": {"type": "int", "low": 1, "high": 3}}, "tpe", "cannot be searched"),
        ({"model.width": {"type": "int", "low": 1, "high": 3}}, "tpe", "unknown config key"),
    ],
)
def test_invalid_dimensions_are_rejected_with_the_key_named(space: dict, sampler: str, message: str) -> None:
    from taktstock.config.loader import validate
    from taktstock.errors import ConfigError
    from taktstock.tuning.space import SearchSpace
    from taktstock.tuning.study import check_sampler

    config = validate(sweep_config(space=space, sampler=sampler), {}, "test")
    with pytest.raises(ConfigError, match=r"tune\.space|tune\.sampler") as err:
        check_sampler(config.tune, SearchSpace(config))
    assert message in str(err.value)


def test_optimizer_arguments_can_be_searched_without_a_base_value() -> None:
    from taktstock.config.loader import validate
    from taktstock.tuning.space import SearchSpace

    space = {"optim.amsgrad": {"type": "categorical", "choices": [True, False]}}
    s = SearchSpace(validate(sweep_config(space=space), {}, "test"))
    assert s.trial_config({"optim.amsgrad": True}).optim.kwargs() == {"amsgrad": True}


def test_model_name_search_drops_arguments_of_the_other_model() -> None:
    from taktstock.config.loader import validate
    from taktstock.tuning.space import SearchSpace

    space = {
        "model.name": {"type": "categorical", "choices": ["mlp", "cnn"]},
        "model.hidden": {"type": "categorical", "choices": [[8], [16]]},
    }
    config = validate(sweep_config(space=space), {}, "test")
    s = SearchSpace(config)
    assert s.trial_config({"model.name": "mlp", "model.hidden": "[8]"}).model.params()["hidden"] == [8]
    assert "hidden" not in s.trial_config({"model.name": "cnn", "model.hidden": "[8]"}).model.params()


def test_mlflow_sweep_has_one_parent_run_and_trials_point_to_it(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow = {"enabled": True, "tracking_uri": uri, "experiment": "sweeps", "log_model": False}
    config = sweep_config(trials=2, pruner="none")
    config["logging"] = config["logging"] | {"mlflow": mlflow}
    cfg = write_config(workdir / "sweep.yaml", config)
    run_cli("tune", str(cfg), "--out", "sweep", cwd=workdir, check=True)
    parent_id = json.loads((workdir / "sweep" / "sweep.json").read_text())["parent_run_id"]
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["taktstock.kind"] == "sweep"
    rows = read_trials(workdir / "sweep")
    best = max(rows, key=lambda r: float(r["value"]))
    assert parent.data.metrics["best/val_acc"] == float(best["value"])
    assert parent.data.tags["best_trial"] == best["number"]
    for r in rows:  # every trial is told to log as a child of the sweep's run
        assert yaml.safe_load(Path(r["run_dir"], "config.yaml").read_text())["logging"]["mlflow"]["parent_run_id"] == parent_id
    # ... and MLflow shows them so: one run per trial, each nested under the sweep's run by MLflow's own tag.
    experiment = client.get_experiment_by_name("sweeps")
    children = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != parent_id]
    assert len(children) == len(rows) and all(r.data.tags.get("mlflow.parentRunId") == parent_id for r in children), [
        r.data.tags for r in children
    ]
    assert yaml.safe_load((workdir / "sweep" / "best.yaml").read_text())["logging"]["mlflow"]["parent_run_id"] is None
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"trials.csv", "best.yaml"}
