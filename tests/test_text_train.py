"""Text classification and language modelling end to end through the CLI: train, evaluate, predict, generate.

One trained run of each kind is shared by the tests of this module (module-scoped fixtures); both are small
(a few dozen steps, one thread) so the module stays cheap on shared cores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_env, run_cli, write_config
from tests.text_helpers import labelled_sentences, python_sources, write_jsonl

LM_MODEL = {"name": "gpt", "block_size": 32, "dim": 48, "depth": 2, "heads": 4, "dropout": 0.0}
TEXT_MODEL = {"name": "transformer", "dim": 32, "depth": 1, "heads": 2, "dropout": 0.0, "max_length": 48}


def lm_config(**train: Any) -> dict[str, Any]:
    """A tiny GPT on 12 of Python's own stdlib modules (as .txt documents under ./corpus)."""
    return {
        "experiment": {"name": "lm"},
        "seed": 0,
        "data": {"source": "corpus", "path": "corpus", "block_size": 32, "tokenizer": {"train": "bpe", "vocab_size": 512}},
        "model": dict(LM_MODEL),
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"epochs": 1, "max_steps": 40, "batch_size": 16, "log_every_n_steps": 10, "val_every_n_steps": 20, **train},
        "metrics": {"monitor": "val/loss", "mode": "min"},
        "logging": {"tensorboard": False, "plots": False, "progress": "off"},
    }


def text_config(**train: Any) -> dict[str, Any]:
    """The transformer classifier on generated topic sentences (./d.jsonl, three balanced classes)."""
    return {
        "experiment": {"name": "topics"},
        "seed": 0,
        "data": {
            "source": "text",
            "path": "d.jsonl",
            "target": "label",
            "max_length": 48,
            "pad_to_multiple_of": 8,
            "tokenizer": {"train": "wordpiece", "vocab_size": 200},
        },
        "model": dict(TEXT_MODEL),
        "optim": {"name": "adamw", "lr": 0.003},
        "train": {"epochs": 3, "batch_size": 32, "log_every_n_steps": 5, **train},
        "metrics": {"monitor": "val/acc", "mode": "max"},
        "logging": {"tensorboard": False, "plots": False, "progress": "off"},
    }


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    python_sources(root / "corpus", 12)
    cfg = write_config(root / "lm.yaml", lm_config())
    run_cli("train", str(cfg), "--run-dir", str(root / "run"), cwd=root, env=cli_env(OMP_NUM_THREADS="1"), check=True)
    return root / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("topics")
    write_jsonl(root / "d.jsonl", labelled_sentences(300))
    cfg = write_config(root / "topics.yaml", text_config())
    run_cli("train", str(cfg), "--run-dir", str(root / "run"), cwd=root, env=cli_env(OMP_NUM_THREADS="1"), check=True)
    return root / "run"


def test_language_model_loss_falls_and_validation_logs_perplexity(lm_run: Path) -> None:
    recs = records(lm_run)
    train = [r["train/loss_step"] for r in recs if "train/loss_step" in r]
    assert len(train) == 4 and train[-1] < 0.85 * train[0], train
    val = [r for r in recs if "val/loss" in r]
    assert [r["step"] for r in val] == [20, 40]
    # Per-token loss and its exponential, and nothing of classification (no 512-class accuracy or F1).
    assert all(set(r) == {"step", "epoch", "val/loss", "val/perplexity"} for r in val)
    assert all(math.isclose(r["val/perplexity"], math.exp(r["val/loss"]), rel_tol=1e-9) for r in val)
    assert val[-1]["val/loss"] < val[0]["val/loss"]
    speeds = [r["train/tokens_per_s"] for r in recs if "train/loss_step" in r]
    assert len(speeds) == 4 and all(s > 0 for s in speeds)
    prep = json.loads((lm_run / "preprocessing.json").read_text())
    assert prep["kind"] == "corpus" and prep["spec"]["input_ids"] == {"shape": [32], "dtype": "int64", "vocab_size": 512}
    assert (lm_run / "tokenizer.json").is_file()
    assert json.loads((lm_run / "run.json").read_text())["status"] == "completed"


def test_generate_continues_a_prompt_from_the_trained_run(lm_run: Path, workdir: Path) -> None:
    from taktstock.deploy.generate import generate

    args = ("generate", str(lm_run), "--prompt", "def main(", "--max-new-tokens", "24", "--temperature", "1.0", "--seed", "3")
    first = run_cli(*args, check=True).stdout
    assert first.startswith("def main(") and len(first) > len("def main(\n")
    # In-process (a CLI start costs seconds): the same text for the same seed, another for another seed.
    assert generate(lm_run, "def main(", max_new_tokens=24, temperature=1.0, seed=3) + "\n" == first
    assert generate(lm_run, "def main(", max_new_tokens=24, temperature=1.0, seed=4) + "\n" != first


def test_evaluate_reports_per_token_loss_and_perplexity_on_the_test_documents(lm_run: Path) -> None:
    from taktstock.evaluation.evaluate import evaluate

    values = evaluate(lm_run, split="test", quiet=True)
    assert set(values) == {"test/loss", "test/perplexity"} and math.isclose(values["test/perplexity"], math.exp(values["test/loss"]))
    assert not (lm_run / "eval" / "confusion_matrix.png").exists()


def test_generate_refuses_a_classification_run(text_run: Path) -> None:
    proc = run_cli("generate", str(text_run), "--prompt", "x")
    assert proc.returncode == 2 and "not a language-model run" in proc.stderr and "Traceback" not in proc.stderr


def test_text_classification_learns_above_chance(text_run: Path) -> None:
    val = [r for r in records(text_run) if "val/acc" in r]
    assert len(val) == 3 and val[-1]["val/acc"] > 0.6, val  # chance is 1/3; three short epochs reach ~0.7
    assert {"val/f1", "val/precision", "val/recall"} <= set(val[-1])
    assert not any("train/tokens_per_s" in r for r in records(text_run))  # throughput in samples for classifiers
    assert (text_run / "tokenizer.json").is_file()


def test_predict_gives_the_probabilities_of_the_training_ids(text_run: Path, tmp_path: Path) -> None:
    """Raw val texts through predict equal the trained model on the prepared val batch: same tokenisation as training."""
    import numpy as np
    import torch

    from taktstock.checkpoint.trained import load_trained_model
    from taktstock.data.prepare import prepare
    from taktstock.data.text.tokenizer import load_tokenizer
    from taktstock.deploy.predict import predict

    trained = load_trained_model(text_run)
    data = prepare(trained.config)  # the run's config records absolute data paths: the same prepared cache
    val = data.split("val")
    batch = val.get_batch(np.arange(len(val)))
    with torch.no_grad():
        expected = torch.softmax(trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), -1)
    tok = load_tokenizer(text_run / "tokenizer.json")
    rows = [json.loads(line) for line in Path(trained.config.data.path).read_text().splitlines()]
    by_ids = {tuple(tok.encode(r["text"]).ids): r["text"] for r in rows}
    write_jsonl(tmp_path / "val.jsonl", [{"text": by_ids[tuple(val[i]["input_ids"].tolist())]} for i in range(len(val))])
    header, out = predict(text_run, tmp_path / "val.jsonl")
    assert header == ["prediction", "prob_food", "prob_music", "prob_sport"]
    torch.testing.assert_close(torch.tensor([r[1:] for r in out]), expected, rtol=1e-5, atol=1e-6)


def test_predict_on_the_trained_classifier_reads_texts_and_jsonl(text_run: Path, workdir: Path) -> None:
    (workdir / "new.txt").write_text("the striker scored a goal for the team\n\nwe baked bread with garlic in the oven\n")
    proc = run_cli("predict", str(text_run), "new.txt", check=True)
    table = list(csv.reader(io.StringIO(proc.stdout)))
    assert table[0] == ["prediction", "prob_food", "prob_music", "prob_sport"] and len(table) == 3
    assert [r[0] for r in table[1:]] == ["sport", "food"]
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-5 for r in table[1:])
    (workdir / "bad.jsonl").write_text('{"body": "x"}\n')
    bad = run_cli("predict", str(text_run), "bad.jsonl")
    assert bad.returncode == 2 and "no field 'text'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("kind", "override", "message"),
    [
        ("lm", "model.block_size=16", "model.block_size: 16 is shorter than data.block_size 32"),
        ("text", "model.max_length=32", "model.max_length: 32 is shorter than data.max_length 48"),
        ("lm", "data.task=classification", "data.task: 'classification' does not fit data.source 'corpus'"),
        ("text", "data.task=language_modeling", "data.task: 'language_modeling' does not fit data.source 'text'"),
    ],
)
def test_config_mistakes_name_the_keys(workdir: Path, kind: str, override: str, message: str) -> None:
    from taktstock.config.loader import load_config
    from taktstock.errors import ConfigError

    cfg = write_config(workdir / "c.yaml", lm_config() if kind == "lm" else text_config())
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, [override])


def test_a_model_shorter_than_the_data_stops_train_with_exit_2(workdir: Path) -> None:
    cfg = write_config(workdir / "c.yaml", lm_config())
    proc = run_cli("train", str(cfg), "model.block_size=16")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.block_size: 16 is shorter than data.block_size 32" in proc.stderr and not (workdir / "experiments").exists()
