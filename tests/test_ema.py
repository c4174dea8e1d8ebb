"""train.ema: equal to an EMA computed by hand over the same steps, bit-exact across SIGKILL + resume, evaluate --weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taktstock.errors import ConfigError
from taktstock.evaluation.evaluate import evaluate
from tests.conftest import cli_env, run_cli, tiny_config, write_config
from tests.resume_harness import assert_resumed_from, newest_valid_checkpoint

# Computes the reference EMA from the weights after every optimizer step (torch.lerp per tensor, the
# documented formula ema + (1 - decay) * (w - ema); the first step copies), and SIGKILLs the run once.
REFERENCE = """
import os, signal, torch
from safetensors.torch import save_file

DECAY = {decay}


class ReferenceEma:
    def __init__(self):
        self.ref = None

    def on_step_end(self, trainer):
        weights = {{k: v.detach().clone() for k, v in trainer.p.model.state_dict().items()}}
        if self.ref is None:
            self.ref = weights
        else:
            for k, w in weights.items():
                self.ref[k] = torch.lerp(self.ref[k], w, 1 - DECAY) if w.is_floating_point() else (self.ref[k] * DECAY + w * (1 - DECAY)).to(w.dtype)
        if trainer.state.step == 5 and os.environ.get("KILL_AT_STEP_5") and not os.path.exists("killed"):
            open("killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, trainer):
        save_file({{k: v.contiguous() for k, v in self.ref.items()}}, os.environ["REFERENCE_OUT"])

    def state_dict(self):
        return {{"ref": self.ref}}

    def load_state_dict(self, state):
        self.ref = state["ref"]
"""


def ema_config() -> dict:
    config = tiny_config(
        train={"epochs": 1, "max_steps": 8, "batch_size": 64, "log_every_n_steps": 4, "callbacks": ["reference:ReferenceEma"]}
    )
    config["model"] = {"name": "cnn", "channels": [8]}  # BatchNorm: its running statistics are averaged too
    config["train"]["ema"] = {"decay": 0.9}
    config["checkpoint"] = {"every_n_steps": 2}
    return config


def test_ema_equals_a_hand_computed_reference_and_survives_sigkill_bit_exactly(workdir: Path) -> None:
    (workdir / "reference.py").write_text(REFERENCE.format(decay=0.9))
    path = write_config(workdir / "exp.yaml", ema_config())
    env = {"PYTHONPATH": f"{workdir}:{cli_env()['PYTHONPATH']}"}
    whole, killed = workdir / "whole", workdir / "killed_run"
    # The uninterrupted reference in a fresh interpreter (with the test server's one intra-op thread: CPU results
    # depend on the thread count); the killed and resumed runs below fork from the test server.
    env_whole = cli_env(**env, REFERENCE_OUT="ref_whole.safetensors", OMP_NUM_THREADS="1")
    run_cli("train", str(path), "--run-dir", str(whole), cwd=workdir, env=env_whole, check=True, fresh=True)
    ema, reference = load_file(str(whole / "ema.safetensors")), load_file(str(workdir / "ref_whole.safetensors"))
    assert ema.keys() == reference.keys() and "features.1.running_mean" in ema
    for key in ema:
        assert torch.equal(ema[key], reference[key]), key
    raw = load_file(str(whole / "model.safetensors"))
    assert not torch.equal(raw["features.0.weight"], ema["features.0.weight"])
    # The only validation is at the last step: the best weights are the final EMA, not the raw weights.
    assert (whole / "best.safetensors").read_bytes() == (whole / "ema.safetensors").read_bytes()

    proc = run_cli(
        "train", str(path), "--run-dir", str(killed), cwd=workdir,
        env=cli_env(**env, KILL_AT_STEP_5="1", REFERENCE_OUT="unused.safetensors"),
    )  # fmt: skip
    assert proc.returncode in (-9, 137), proc.stderr[-2000:]
    at_kill = newest_valid_checkpoint(killed)
    assert at_kill is not None and at_kill.step == 4  # killed at step 5, checkpoints every 2 steps
    resumed = run_cli("train", "--resume", str(killed), cwd=workdir, env=cli_env(**env, REFERENCE_OUT="ref_killed.safetensors"), check=True)
    assert_resumed_from(resumed.stderr, at_kill)
    for name in ("ema.safetensors", "model.safetensors", "best.safetensors"):
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    # The hand-computed EMA of the killed run (its callback state restored from the checkpoint) is the whole run's.
    assert (workdir / "ref_killed.safetensors").read_bytes() == (workdir / "ref_whole.safetensors").read_bytes()

    ema_eval = run_cli("evaluate", str(whole), "--weights", "raw", cwd=workdir, check=True)  # the CLI option, once
    assert "test/acc" in ema_eval.stdout
    # In-process (no more start-ups): each choice loads its file; raw best is checkpoints/best.pt's "model".
    from taktstock.checkpoint.manager import load_checkpoint
    from taktstock.checkpoint.trained import load_trained_model

    for which, weights, expected in (
        ("best", "ema", load_file(str(whole / "best.safetensors"))),
        ("last", "ema", ema),
        ("last", "raw", raw),
        ("best", "raw", load_checkpoint(whole / "checkpoints" / "best.pt")["model"]),
    ):
        state = load_trained_model(whole, which, weights=weights).model.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected), (which, weights)
    with pytest.raises(ConfigError, match="--weights: expected ema or raw"):
        evaluate(whole, weights="average")
