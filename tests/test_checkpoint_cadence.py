"""The default checkpoint cadence (checkpoint.every_n_minutes) and optimizers without schema defaults, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config


def _steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.json"))


def test_default_cadence_saves_the_end_of_training_only_in_a_short_run(workdir: Path) -> None:
    cfg = write_config(workdir / "c.yaml", tiny_config(checkpoint={"save_best": False}))
    run_cli("train", str(cfg), "--run-dir", "run", cwd=workdir, check=True)
    info = json.loads((workdir / "run" / "run.json").read_text())
    assert _steps(workdir / "run") == [info["steps"]]  # no epoch-end saves by default: 5 minutes have not passed


def test_clock_cadence_checkpoints_resume_bit_identically(workdir: Path) -> None:
    # A clock of ~0.06 ms: every step boundary is past it, so every step is checkpointed by the clock alone.
    cfg = write_config(workdir / "c.yaml", tiny_config(train={"epochs": 1, "batch_size": 256}, checkpoint={"keep_last": 50}))
    run_cli("train", str(cfg), "--run-dir", "plain", "checkpoint.every_n_minutes=null", cwd=workdir, check=True)
    run_cli("train", str(cfg), "--run-dir", "clock", "checkpoint.every_n_minutes=0.000001", cwd=workdir, check=True)
    steps = _steps(workdir / "clock")
    assert _steps(workdir / "plain") == [steps[-1]] and steps == list(range(1, steps[-1] + 1))
    reference = (workdir / "plain" / "model.safetensors").read_bytes()
    assert (workdir / "clock" / "model.safetensors").read_bytes() == reference  # where checkpoints go changes nothing
    # Keep a checkpoint from the middle of the epoch only, as if the process had been killed there, and resume.
    ckpts = workdir / "clock" / "checkpoints"
    for step in steps[steps.index(2) + 1 :]:
        for suffix in (".pt", ".json"):
            (ckpts / f"step-{step:08d}{suffix}").unlink()
    for name in ("last.pt", "last.json", "best.pt", "best.json"):
        (ckpts / name).unlink(missing_ok=True)
    proc = run_cli("train", "--resume", "clock", cwd=workdir, check=True)
    assert "from step-00000002.pt" in proc.stderr
    assert (workdir / "clock" / "model.safetensors").read_bytes() == reference


@pytest.mark.parametrize(("name", "says"), [("lbfgs", "needs step(closure)"), ("sparseadam", "needs sparse gradients")])
def test_optimizers_without_weight_decay_get_no_schema_default_and_a_clear_error(workdir: Path, name: str, says: str) -> None:
    cfg = write_config(workdir / "c.yaml", tiny_config(optim={"name": name}))
    proc = run_cli("train", str(cfg), "--run-dir", "run", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    assert "optim.name" in proc.stderr and says in proc.stderr and "Traceback" not in proc.stderr
    assert "weight_decay" not in proc.stderr


def test_schema_defaults_reach_only_optimizers_that_take_them() -> None:
    from taktstock.config.schema import OptimConfig
    from taktstock.registry import OPTIMIZERS

    c = OptimConfig(name="lbfgs", lr=0.5, history_size=3)
    assert OPTIMIZERS.get("lbfgs").obj.kwargs(c) == {"lr": 0.5, "history_size": 3}
    assert OPTIMIZERS.get("adamw").obj.kwargs(OptimConfig(weight_decay=0.1)) == {"lr": 1e-3, "weight_decay": 0.1}


def test_best_model_is_written_with_the_checkpoints_not_at_each_improvement(workdir: Path) -> None:
    # Short epochs that improve often: the old cadence wrote best.pt at every improvement.
    cfg = write_config(workdir / "c.yaml", tiny_config(train={"epochs": 8, "batch_size": 256, "log_every_n_steps": 5}))
    run_cli("train", str(cfg), "--run-dir", "run", cwd=workdir, check=True)
    run = workdir / "run"
    best, best_step, improvements = None, None, 0
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        if "val/acc" in record and (best is None or record["val/acc"] > best):
            best, best_step, improvements = record["val/acc"], record["step"], improvements + 1
    assert improvements >= 3
    info = json.loads((run / "run.json").read_text())
    # One best.pt (at the end, with the final checkpoint) and one periodic checkpoint: two files for any number of improvements.
    assert info["checkpoints"]["saves"] == 2 and 0 < info["checkpoints"]["share"] < 1
    assert info["best"] == best
    from safetensors.torch import load_file

    from taktstock.checkpoint.manager import load_checkpoint

    kept = load_checkpoint(run / "checkpoints" / "best.pt")
    assert kept["loop"]["step"] == best_step and json.loads((run / "checkpoints" / "best.json").read_text())["step"] == best_step
    weights = load_file(str(run / "best.safetensors"))
    assert weights.keys() == kept["model"].keys() and all(torch.equal(weights[k], kept["model"][k]) for k in weights)


def test_a_kept_best_state_is_written_before_the_checkpoint_that_covers_it(tmp_path: Path) -> None:
    """A checkpoint whose monitor holds an improvement must never be on disk before that improvement's best.pt:
    a resume from it would not replay the improvement."""
    from taktstock.checkpoint.checkpointer import Checkpointer
    from taktstock.config.schema import CheckpointConfig
    from taktstock.training.distributed import DistEnv

    calls: list[tuple[str, int, float]] = []

    class Recorder:
        dir = tmp_path

        def save(self, state: dict, step: int) -> Path:
            calls.append(("save", step, float(state["w"]["x"][0])))
            return tmp_path / f"step-{step:08d}.pt"

        def save_best(self, state: dict, step: int) -> Path:
            calls.append(("best", step, float(state["w"]["x"][0])))
            return tmp_path / "best.pt"

    weights = {"x": torch.zeros(3)}

    class Part:
        def state_dict(self) -> dict:
            return weights

        def load_state_dict(self, state: dict) -> None:
            pass

    ckpt = Checkpointer(Recorder(), CheckpointConfig(), DistEnv(), torch.device("cpu"), horizon=10)  # type: ignore[arg-type]
    ckpt.register("w", Part())
    weights["x"].fill_(1.0)
    ckpt.save_best(3)
    weights["x"].fill_(2.0)  # training goes on in place after the improvement
    ckpt.save(5)
    ckpt.write_best()  # nothing kept any more: no second write
    assert calls == [("best", 3, 1.0), ("save", 5, 2.0)]
