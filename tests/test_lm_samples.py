"""`logging.samples`: a language model's continuations of fixed prompts at each validation, in
RUN_DIR/samples.jsonl, TensorBoard and MLflow, without changing what training computes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from taktstock.config.schema import SamplesConfig
from taktstock.training.samples import SampleLogger
from tests.conftest import cli_env, run_cli, write_config
from tests.test_text_train import lm_config, text_config
from tests.text_helpers import labelled_sentences, python_sources, write_jsonl

SAMPLES = {"prompts": ["def main(", ""], "max_new_tokens": 6, "temperature": 1.0, "top_k": 20, "seed": 3}


def _train(root: Path, name: str, **logging: object) -> Path:
    config = lm_config(max_steps=12, val_every_n_steps=6, log_every_n_steps=6)
    config["model"]["dropout"] = 0.1  # training draws from the global RNG: sampling must not move it
    config["logging"] |= logging
    cfg = write_config(root / f"{name}.yaml", config)
    run_cli("train", str(cfg), "--run-dir", str(root / name), cwd=root, env=cli_env(OMP_NUM_THREADS="1"), check=True)
    return root / name


def test_samples_are_logged_at_each_validation_and_leave_training_bit_identical(workdir: Path) -> None:
    python_sources(workdir / "corpus", 6)
    plain = _train(workdir, "plain")
    mlflow = {"enabled": True, "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "log_model": False}
    sampled = _train(workdir, "sampled", samples=SAMPLES, tensorboard=True, mlflow=mlflow)

    a, b = load_file(plain / "model.safetensors"), load_file(sampled / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (plain / "samples.jsonl").exists()

    lines = [json.loads(line) for line in (sampled / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["prompt"]) for r in lines] == [(6, "def main("), (6, ""), (12, "def main("), (12, "")]
    assert all(r["text"].startswith(r["prompt"]) and len(r["text"]) > len(r["prompt"]) for r in lines)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(sampled), size_guidance={"tensors": 0}).Reload()
    texts = events.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [6, 12]
    assert lines[2]["text"].splitlines()[0] in texts[1].tensor_proto.string_val[0].decode()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow["tracking_uri"])
    run_id = json.loads((sampled / "run.json").read_text())["mlflow"]["run_id"]
    assert sorted(f.path for f in client.list_artifacts(run_id, "samples")) == ["samples/step_12.txt", "samples/step_6.txt"]


def test_samples_are_refused_for_a_model_that_is_not_a_language_model(workdir: Path) -> None:
    write_jsonl(workdir / "d.jsonl", labelled_sentences(30))
    config = text_config()
    config["logging"]["samples"] = SAMPLES
    proc = run_cli("train", str(write_config(workdir / "t.yaml", config)), cwd=workdir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "logging.samples: text samples need a language model trained on data.source: corpus" in proc.stderr


def test_a_resumed_run_drops_samples_written_after_its_checkpoint_and_samples_at_the_same_validations(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"step": s, "prompt": "", "text": "x"}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    logger = SampleLogger(SamplesConfig(prompts=[""], every_n_validations=2), None, 8, None, path, is_main=True)
    logger.load_state_dict({"validations": 3})  # restored from the checkpoint of step 20
    logger.on_train_start(SimpleNamespace(state=SimpleNamespace(step=20)))
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20]
    logger.sample = lambda model, autocast: ["sampled"]  # type: ignore[method-assign]
    sent: list[tuple] = []
    trackers = SimpleNamespace(call=lambda *args: sent.append(args))
    trainer = SimpleNamespace(
        state=SimpleNamespace(step=30, epoch=0), p=SimpleNamespace(ema=None, model=None, autocast=None, trackers=trackers)
    )
    logger.on_validation_end(trainer, {})  # the 4th validation: every 2nd samples
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 30, "epoch": 0, "prompt": "", "text": "sampled"}
    assert sent == [("log_text", "samples", "**(new document)**\n\n    sampled", 30)]
    trainer.state.step = 40
    logger.on_validation_end(trainer, {})  # the 5th: skipped
    assert len(path.read_text().splitlines()) == 3 and logger.state_dict() == {"validations": 5}


class _DropoutLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.drop, self.head = torch.nn.Embedding(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(input_ids)))


def test_sampling_restores_train_mode_and_reads_no_global_rng() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate("abcdefgh")}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    torch.manual_seed(0)
    model = _DropoutLM()
    logger = SampleLogger(SamplesConfig(prompts=["a b c"], max_new_tokens=5), tok, 4, None, Path("unused"), is_main=False)
    before = torch.get_rng_state()
    first = logger.sample(model, lambda: torch.autocast("cpu", enabled=False))
    assert model.training and torch.equal(torch.get_rng_state(), before)  # dropout was off: eval mode, own generator
    assert first[0].startswith("a b c") and len(first[0].split()) == 8
    assert logger.sample(model, lambda: torch.autocast("cpu", enabled=False)) == first


@pytest.mark.parametrize("bad", [{"prompts": []}, {"prompts": ["x"], "max_new_tokens": 0}, {"prompts": ["x"], "temperature": -1}])
def test_samples_settings_are_validated(bad: dict) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SamplesConfig(**bad)
