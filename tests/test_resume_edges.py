"""Resume edge cases: a log shorter than its checkpoint says, a resume that finds no valid checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import tiny_config

from taktstock.config.loader import validate
from taktstock.tracking.jsonl import MetricsFile, read_metrics


def test_metrics_log_shorter_than_the_checkpoint_offset_is_never_padded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = MetricsFile(tmp_path / "metrics.jsonl")
    log.open(truncate_to=None)
    for step in (1, 2, 3):
        log.write({"step": step})
    log.close()
    data = (tmp_path / "metrics.jsonl").read_bytes()
    at_two = data.index(b"\n", data.index(b"\n") + 1) + 1  # the offset after two lines

    log.open(truncate_to=at_two)  # a normal resume: cut back to the checkpoint's length
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]

    log.open(truncate_to=10_000)  # the file lost its tail (power loss): keep what is there, no zero bytes
    log.close()
    assert b"\0" not in (tmp_path / "metrics.jsonl").read_bytes()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert "shorter than at the checkpoint" in capsys.readouterr().err


def test_resume_without_a_valid_checkpoint_starts_clean_and_matches_a_fresh_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from taktstock.training.run import train

    raw = tiny_config(logging={"tensorboard": True, "plots": False})
    config = validate(raw, {}, "<test>")
    train(config, run_dir=workdir / "fresh")
    # The run directory of an attempt killed before its first checkpoint was complete: no checkpoint, the
    # metrics it logged past it (different from the fresh run's), final weights of an earlier attempt with
    # another seed, and that attempt's TensorBoard events.
    train(validate(raw | {"seed": 2}, {}, "<test>"), run_dir=workdir / "run")
    shutil.rmtree(workdir / "run" / "checkpoints")
    (workdir / "run" / "checkpoints").mkdir()
    stale = {name: (workdir / "run" / name).read_bytes() for name in ("model.safetensors", "metrics.jsonl")}
    for name, data in stale.items():  # what the comparison below must not find any more
        assert data != (workdir / "fresh" / name).read_bytes(), name
    (workdir / "run" / "config.yaml").write_text((workdir / "fresh" / "config.yaml").read_text())  # the killed run's config
    events_before = sorted((workdir / "run").glob("events.out.tfevents.*"))
    capsys.readouterr()
    train(resume=workdir / "run")
    assert (
        f"no valid checkpoint in {workdir / 'run' / 'checkpoints'}: starting {workdir / 'run'} from the beginning"
        in capsys.readouterr().err
    )
    assert (workdir / "run" / "model.safetensors").read_bytes() == (workdir / "fresh" / "model.safetensors").read_bytes()
    assert (workdir / "run" / "metrics.jsonl").read_bytes() == (workdir / "fresh" / "metrics.jsonl").read_bytes()
    # The earlier attempt's event files are gone: TensorBoard shows one curve, not two.
    assert events_before and not set(events_before) & set((workdir / "run").glob("events.out.tfevents.*"))
