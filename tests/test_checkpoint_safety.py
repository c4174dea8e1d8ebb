"""Crash-safe checkpoints, preemption signals, write failures, NaN policy, safe loading and the resume guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env, tiny_config, write_config
from resume_harness import (
    ForkServer,
    assert_resumed_from,
    checkpoint_write_in_progress,
    count_lines,
    newest_valid_checkpoint,
    reference_server,
    shared_server,
    wait_until,
)

from taktstock.checkpoint.manager import CheckpointManager, load_checkpoint, verify


@pytest.fixture
def server() -> ForkServer:
    return shared_server()


def safety_config(**train) -> dict:
    return tiny_config(
        experiment={"name": "safety"},
        seed=5,
        data={"source": "digits", "augment": {"noise_std": 0.05}},
        model={"name": "mlp", "hidden": [32], "dropout": 0.2},
        scheduler={"name": "cosine"},
        train={"epochs": 3, "batch_size": 32, "log_every_n_steps": 1, "accumulate_grad_batches": 2} | train,
        checkpoint={"every_n_steps": 3, "keep_last": 3},
        logging={"tensorboard": False, "plots": False, "progress": "off"},
    )


_references: dict[str, bytes] = {}


def reference_weights(server: ForkServer, root: Path, config: dict) -> bytes:
    """Final weights of the uninterrupted run of `config` (computed once per config)."""
    key = json.dumps(config, sort_keys=True)
    if key not in _references:
        cfg = write_config(root / "reference.yaml", config)
        # A fresh interpreter: the interrupted runs fork from `server`, so a result that depends on its imports would differ.
        rc = reference_server().run(["train", str(cfg), "--run-dir", str(root / "reference")], root, root / "reference.log")
        assert rc == 0, (root / "reference.log").read_text()
        _references[key] = (root / "reference" / "model.safetensors").read_bytes()
    return _references[key]


def resume(server: ForkServer, root: Path, run: Path, *extra: str, env: dict | None = None, name: str = "resume") -> tuple[int, str]:
    """`train --resume RUN`; when it succeeds, it must have continued from the newest valid checkpoint beforehand."""
    log = root / f"{name}.log"
    expected = newest_valid_checkpoint(run)
    rc = server.run(["train", "--resume", str(run), *extra], root, log, env)
    if rc == 0:
        assert_resumed_from(log.read_text(), expected)
    return rc, log.read_text()


def stop_with_signal(
    server: ForkServer, root: Path, config: dict, sig: int, after_lines: int, env: dict | None = None, group: bool = False
):
    cfg = write_config(root / "config.yaml", config)
    run = root / "run"
    child = server.start(["train", str(cfg), "--run-dir", str(run)], root, root / "first.log", env)
    assert wait_until(lambda: count_lines(run / "metrics.jsonl") >= after_lines, child, 120), child.output()
    sent = time.monotonic()
    child.signal_group(sig) if group else child.signal(sig)
    rc = child.wait(60)
    return run, rc, time.monotonic() - sent, child.output()


# -- damaged checkpoints --------------------------------------------------------------------


def test_corrupted_and_truncated_newest_checkpoints_are_skipped_with_a_warning_and_result_stays_exact(server, tmp_path):
    config = safety_config()
    want = reference_weights(server, tmp_path, config)
    run, rc, _, out = stop_with_signal(server, tmp_path, config, signal.SIGTERM, after_lines=30)
    assert rc == 128 + signal.SIGTERM, out
    newest = CheckpointManager(run / "checkpoints").periodic()
    assert len(newest) == 3
    # Newest: one flipped byte in the middle; second newest: cut in half.
    data = bytearray(newest[0].path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest[0].path.write_bytes(bytes(data))
    newest[1].path.write_bytes(newest[1].path.read_bytes()[: newest[1].path.stat().st_size // 2])
    (run / "checkpoints" / ".tmp-step-99999999.pt.12345").write_bytes(b"partial")  # a stale temporary

    rc, log = resume(server, tmp_path, run)
    assert rc == 0, log
    assert f"warning: skipping damaged checkpoint {newest[0].path}" in log
    assert f"warning: skipping damaged checkpoint {newest[1].path}" in log
    assert f"from {newest[2].path.name} (step {newest[2].step}," in log
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert (run / "model.safetensors").read_bytes() == want


def test_rewriting_a_checkpoint_keeps_it_valid_at_every_instant(tmp_path, monkeypatch):
    """Saving the same step (or best.pt) again: a crash at any point leaves a file that matches its manifest."""
    import taktstock.checkpoint.manager as manager

    ckpts = CheckpointManager(tmp_path)
    ckpts.prepare()
    ckpts.save({"w": torch.zeros(3)}, 7)
    real_write = manager.atomic_write_bytes

    def crash_after_rename(path, data, before_replace=None):
        real_write(path, data, before_replace)
        raise KeyboardInterrupt("killed before the final manifest")

    monkeypatch.setattr(manager, "atomic_write_bytes", crash_after_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpts.save({"w": torch.ones(3)}, 7)
    info = ckpts.latest_valid()
    assert info is not None and info.step == 7 and verify(info) is None
    assert torch.equal(load_checkpoint(info.path)["w"], torch.ones(3))

    def crash_before_rename(path, data, before_replace=None):
        raise KeyboardInterrupt("killed while writing the data")

    monkeypatch.setattr(manager, "atomic_write_bytes", crash_before_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpts.save({"w": torch.full((3,), 2.0)}, 7)
    info = ckpts.latest_valid()
    assert info is not None and torch.equal(load_checkpoint(info.path)["w"], torch.ones(3))


# -- preemption -----------------------------------------------------------------------------


def test_sigterm_saves_a_checkpoint_and_exits_then_resume_is_exact(server, tmp_path):
    """A real `python -m taktstock` process (not forked): SIGTERM, prompt exit with a resumable checkpoint."""
    config = safety_config()
    want = reference_weights(server, tmp_path, config)
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "taktstock", "train", str(cfg), "--run-dir", str(run)],
        cwd=tmp_path,
        env=cli_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while count_lines(run / "metrics.jsonl") < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "training finished before the signal"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    # Within a scheduler's usual grace period (Kubernetes: 30 s) even on a loaded machine; that it stopped at
    # the step in flight rather than running on is checked by the checkpoint's step below.
    assert took < 25, f"took {took:.1f}s to stop"
    assert f"resume with: taktstock train --resume {run}" in err
    last_step = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    info = CheckpointManager(run / "checkpoints").latest_valid()
    assert info is not None and info.step == last_step  # at most the step in flight is lost
    assert json.loads((run / "run.json").read_text())["status"] == "preempted"

    rc, log = resume(server, tmp_path, run)
    assert rc == 0, log
    assert (run / "model.safetensors").read_bytes() == want


def test_ctrl_c_to_the_process_group_with_dataloader_workers_saves_a_checkpoint_and_resume_is_exact(server, tmp_path):
    """Ctrl-C in a terminal signals the trainer and its DataLoader workers; only the trainer acts on it."""
    config = safety_config(epochs=2) | {"data": {"source": "digits", "num_workers": 2, "augment": {"noise_std": 0.05}}}
    want = reference_weights(server, tmp_path, config)
    run, rc, took, out = stop_with_signal(server, tmp_path, config, signal.SIGINT, after_lines=25, group=True)
    assert rc == 128 + signal.SIGINT, out
    assert took < 10
    assert out.count("SIGINT received: stopping after the current step") == 1, out
    assert "Traceback" not in out
    rc, log = resume(server, tmp_path, run)
    assert rc == 0, log
    assert (run / "model.safetensors").read_bytes() == want


def test_second_sigint_exits_at_once_even_inside_a_checkpoint_write(server, tmp_path):
    config = safety_config()
    want = reference_weights(server, tmp_path, config)
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    slow = {"TAKTSTOCK_TEST_SLOW_CHECKPOINT_WRITE": "3"}  # each checkpoint write now takes over 6 s
    child = server.start(["train", str(cfg), "--run-dir", str(run)], tmp_path, tmp_path / "first.log", slow)
    assert wait_until(lambda: any((run / "checkpoints").glob(".tmp-*")), child, 120), child.output()
    child.signal(signal.SIGINT)
    # The second SIGINT once the first is acknowledged, while the write (over 6 s) is still in progress.
    assert wait_until(lambda: "SIGINT received" in child.output(), child, 60), child.output()
    manifests = sorted(p.name for p in (run / "checkpoints").glob("*.json"))
    lines = count_lines(run / "metrics.jsonl")
    child.signal(signal.SIGINT)
    assert child.wait(60) == 130
    assert "second SIGINT: exiting immediately" in child.output()
    # By ordering, not by the clock: it exited inside that write - which never completed (no new manifest, its
    # temporary file left behind) - and trained no further step.
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json")) == manifests
    assert checkpoint_write_in_progress(run / "checkpoints"), "the interrupted write left nothing unfinished: it completed"
    assert count_lines(run / "metrics.jsonl") == lines
    rc, log = resume(server, tmp_path, run)  # the interrupted write is ignored; training restarts cleanly
    assert rc == 0, log
    assert (run / "model.safetensors").read_bytes() == want


# -- write failures -------------------------------------------------------------------------


def test_disk_full_during_checkpoint_keeps_previous_checkpoint_and_stops_with_clear_message(server, tmp_path):
    config = safety_config()
    want = reference_weights(server, tmp_path, config)
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    rc = server.run(["train", str(cfg), "--run-dir", str(run)], tmp_path, log, {"TAKTSTOCK_TEST_FAIL_CHECKPOINT_WRITE": "4"})
    out = log.read_text()
    assert rc == 1, out
    assert "error: could not write checkpoint at step" in out and "No space left on device" in out, out
    assert "Traceback" not in out
    ckpts = CheckpointManager(run / "checkpoints")
    kept = ckpts.latest_valid()
    assert kept is not None and f"the previous checkpoint is intact: {kept.path}" in out
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert json.loads((run / "run.json").read_text())["status"] == "aborted"
    rc, log_text = resume(server, tmp_path, run)
    assert rc == 0, log_text
    assert (run / "model.safetensors").read_bytes() == want


# -- NaN / Inf ------------------------------------------------------------------------------

NAN_STEP = """
import torch
from taktstock.training.step import default_step

calls = 0


def step(model, batch, loss_fn):
    # Every 9th training micro-batch (in this process) produces a NaN loss; validation stays finite.
    global calls
    loss, out, target = default_step(model, batch, loss_fn)
    calls += model.training
    if model.training and calls % 9 == 0:
        with open("nan_calls.txt", "a") as f:
            f.write(f"{calls}\\n")
        loss = loss * float("nan")
    return loss, out, target
"""


def test_nan_loss_stops_with_error_naming_the_step_and_keeps_last_good_checkpoint(server, tmp_path):
    (tmp_path / "nanstep.py").write_text(NAN_STEP)
    config = safety_config(step_fn="nanstep:step", accumulate_grad_batches=1, val_every_n_steps=4)
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    rc = server.run(["train", str(cfg), "--run-dir", str(run)], tmp_path, tmp_path / "log")
    out = (tmp_path / "log").read_text()
    assert rc == 1, out
    assert "error: non-finite loss (NaN/Inf) at step 9," in out
    kept = CheckpointManager(run / "checkpoints").latest_valid()
    assert kept is not None and kept.step < 9 and f"the last good checkpoint is {kept.path}" in out
    assert all(torch.isfinite(v).all() for v in load_checkpoint(kept.path)["model"].values())
    assert json.loads((run / "run.json").read_text())["status"] == "aborted"
    # The best state before the abort is on disk (best.pt is kept in memory until a checkpoint or an abort writes it).
    vals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val/acc" in r]
    best = CheckpointManager(run / "checkpoints").best()
    assert [r["step"] for r in vals] == [4, 8] and best is not None and best.step == max(vals, key=lambda r: r["val/acc"])["step"]


def test_nan_loss_skip_policy_skips_batches_and_reports_the_count(server, tmp_path):
    (tmp_path / "nanstep.py").write_text(NAN_STEP)
    config = safety_config(step_fn="nanstep:step", nan_policy="skip")
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    rc = server.run(["train", str(cfg), "--run-dir", str(run)], tmp_path, tmp_path / "log")
    out = (tmp_path / "log").read_text()
    assert rc == 0, out
    skipped = len((tmp_path / "nan_calls.txt").read_text().split())
    assert skipped > 3
    assert json.loads((run / "run.json").read_text())["nan_skips"] == skipped
    logged = [r["train/nan_skips"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/nan_skips" in r]
    assert logged[-1] == skipped and logged == sorted(logged)
    assert f"skipped {skipped} batch(es) with a non-finite loss" in out
    from safetensors.torch import load_file

    assert all(torch.isfinite(v).all() for v in load_file(run / "model.safetensors").values())


# -- safe loading ---------------------------------------------------------------------------


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_with_malicious_pickle_is_refused(server, tmp_path):
    config = safety_config(epochs=1)
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    assert server.run(["train", str(cfg), "--run-dir", str(run)], tmp_path, tmp_path / "log") == 0
    ckpts = CheckpointManager(run / "checkpoints")
    ckpts.save({"model": _Exploit()}, 999)  # a valid manifest: the hash check alone cannot help
    rc, log = resume(server, tmp_path, run)
    assert rc == 2, log
    assert "error: refusing to load" in log and "step-00000999.pt" in log and "weights_only" in log
    assert "Traceback" not in log
    assert not (tmp_path / "PWNED").exists()


# -- resume guard ---------------------------------------------------------------------------


def test_resume_guard_names_changed_keys_allows_longer_training_and_force(server, tmp_path):
    config = safety_config(epochs=1) | {"scheduler": {"name": "onecycle"}}
    cfg = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    assert server.run(["train", str(cfg), "--run-dir", str(run)], tmp_path, tmp_path / "log") == 0
    horizon = json.loads((run / "run.json").read_text())["steps"]

    rc, log = resume(server, tmp_path, run, "optim.lr=0.5", "train.batch_size=16", name="changed")
    assert rc == 2, log
    assert "optim.lr" in log and "train.batch_size" in log and "--force" in log and "Traceback" not in log

    rc, log = resume(server, tmp_path, run, "train.epochs=2", name="longer")
    assert rc == 0, log
    assert f"keeps its original horizon of {horizon} steps" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r and r["step"] > horizon]
    assert len(lrs) > 5 and len(set(lrs)) == 1  # past the horizon: the schedule's final learning rate
    assert json.loads((run / "run.json").read_text())["steps"] > horizon

    rc, log = resume(server, tmp_path, run, "optim.lr=0.5", "--force", name="forced")
    assert rc == 0, log


# -- user callback state --------------------------------------------------------------------

COUNTING_CALLBACK = """
import json


class StepCounter:
    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer):
        self.steps += 1

    def on_train_end(self, trainer):
        with open("callback_steps.json", "w") as f:
            json.dump({"counted": self.steps, "trainer": trainer.state.step}, f)

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]
"""


def test_user_callback_state_is_checkpointed_and_restored(server, tmp_path):
    (tmp_path / "counting.py").write_text(COUNTING_CALLBACK)
    config = safety_config(callbacks=["counting:StepCounter"])
    run, rc, _, out = stop_with_signal(server, tmp_path, config, signal.SIGTERM, after_lines=30)
    assert rc == 128 + signal.SIGTERM, out
    rc, log = resume(server, tmp_path, run)
    assert rc == 0, log
    counts = json.loads((tmp_path / "callback_steps.json").read_text())
    assert counts["counted"] == counts["trainer"] > 30
