"""Exact resume after SIGKILL at random points: the final weights and logs equal an uninterrupted run's, bit for bit.

Every run here has shuffling, dropout, training-time augmentation (shift + noise), gradient
accumulation over 3 micro-batches (with a partial last cycle), a cosine LR schedule, validation every
5 steps and early stopping that really triggers. Kills land mid-epoch, mid-accumulation cycle, in
validation, at epoch ends and inside checkpoint writes. See tests/resume_harness.py for the fork
server that keeps dozens of restarts within the time budget.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import tiny_config, write_config
from resume_harness import VALIDATION_MARKER_STEP, ForkServer, count_lines, kill_and_resume, reference_server, shared_server


@pytest.fixture
def server() -> ForkServer:
    return shared_server()


def kill_config(workers: int = 0, epochs: int = 8, tensorboard: bool = False) -> dict:
    return tiny_config(
        experiment={"name": "kill"},
        seed=3,
        data={"source": "digits", "num_workers": workers, "augment": {"shift": 1, "noise_std": 0.1}},
        model={"name": "mlp", "hidden": [32], "dropout": 0.2},
        optim={"name": "adamw", "lr": 0.01},
        scheduler={"name": "cosine"},
        train={"epochs": epochs, "batch_size": 32, "log_every_n_steps": 1, "accumulate_grad_batches": 3, "val_every_n_steps": 5},
        metrics={"monitor": "val/loss", "mode": "min"},
        checkpoint={"every_n_steps": 4},
        early_stopping={"enabled": True, "patience": 4, "min_delta": 0.01},
        logging={"tensorboard": tensorboard, "plots": False, "progress": "off"},
    )


def reference_run(server: ForkServer, root: Path, config: dict) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    cfg = write_config(root / "config.yaml", config)
    ref = root / "reference"
    # A fresh interpreter: the killed runs fork from `server`, so a result that depends on its imports would differ.
    rc = reference_server().run(["train", str(cfg), "--run-dir", str(ref)], root, root / "reference.log")
    assert rc == 0, (root / "reference.log").read_text()
    return cfg, ref


def assert_same_run(run: Path, ref: Path) -> None:
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes(), "final weights differ"
    assert (run / "best.safetensors").read_bytes() == (ref / "best.safetensors").read_bytes(), "best weights differ"
    assert (run / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes(), "metrics.jsonl differs"
    keys = [(r["step"], tuple(sorted(r))) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert len(keys) == len(set(keys)), "a metrics record is duplicated"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_sigkill_at_random_points_resumes_bit_identical_in_memory_batches(server, tmp_path):
    cfg, ref = reference_run(server, tmp_path, kill_config(workers=0, tensorboard=True))
    assert "early_stopping" in (tmp_path / "reference.log").read_text()  # the stop decision itself is resumed
    run = tmp_path / "killed"
    stats = kill_and_resume(server, tmp_path, cfg, run, kills=8, rng=random.Random(11), total_lines=count_lines(ref / "metrics.jsonl"))
    assert stats.kills == 8, stats.points
    assert any(stats.resumed_from), stats.resumed_from  # (each resume's step is checked by the harness)
    assert_same_run(run, ref)
    assert_continuous_tensorboard(run, ref)


def test_sigkill_at_random_points_resumes_bit_identical_with_dataloader_workers(server, tmp_path):
    cfg, ref = reference_run(server, tmp_path, kill_config(workers=2, epochs=3))
    run = tmp_path / "killed"
    stats = kill_and_resume(server, tmp_path, cfg, run, kills=6, rng=random.Random(12), total_lines=count_lines(ref / "metrics.jsonl"))
    assert stats.kills == 6, stats.points
    assert any(stats.resumed_from), stats.resumed_from
    assert_same_run(run, ref)


def test_sigkill_inside_checkpoint_writes_and_validation_resumes_bit_identical(server, tmp_path):
    (tmp_path / "markstep.py").write_text(VALIDATION_MARKER_STEP)
    config = kill_config(workers=0, epochs=4)
    config["train"]["step_fn"] = "markstep:step"
    cfg, ref = reference_run(server, tmp_path, config)
    run = tmp_path / "killed"
    # Each checkpoint write sleeps twice (before its rename, before its manifest): kills land inside writes.
    env = {"TAKTSTOCK_TEST_SLOW_CHECKPOINT_WRITE": "0.05"}
    stats = kill_and_resume(
        server,
        tmp_path,
        cfg,
        run,
        kills=8,
        rng=random.Random(13),
        total_lines=count_lines(ref / "metrics.jsonl"),
        env=env,
        in_write_fraction=0.6,
        write_window=0.07,
        val_marker=tmp_path / "validating",
        in_val_fraction=0.4,
    )
    assert stats.kills == 8, stats.points
    assert stats.in_write >= 2 and stats.in_validation >= 2, stats.points
    assert any(stats.resumed_from), stats.resumed_from
    assert_same_run(run, ref)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")], "stale temporary files left"


def assert_continuous_tensorboard(run_tb: Path, ref_tb: Path) -> None:
    """After purging the events a killed process wrote past its checkpoint, TensorBoard shows the reference curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def curves(path: Path) -> dict[str, list[tuple[int, float]]]:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    got, want = curves(run_tb), curves(ref_tb)
    assert set(got) == set(want)
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert steps == sorted(steps), f"{tag}: steps go backwards"
        assert points == want[tag], f"{tag}: curve differs from the uninterrupted run"
