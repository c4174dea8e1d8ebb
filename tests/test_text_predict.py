"""`taktstock predict` on a text-classification run: the run's tokenizer, the training ids, labels and probabilities."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch

from taktstock.config.loader import save_config
from taktstock.config.schema import Config
from taktstock.data.text.prepared import prepare_text_classification
from taktstock.deploy.predict import predict
from taktstock.metrics.tokens import token_cross_entropy
from taktstock.models.registry import build_model
from taktstock.training.components import save_weights
from tests.conftest import run_cli
from tests.text_helpers import labelled_sentences, write_jsonl


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("textrun")
    rows = labelled_sentences(150)
    write_jsonl(root / "d.jsonl", rows)
    torch.set_num_threads(1)
    # The text source joins data.source with the dataset seam; until then the saved config names a stand-in
    # (predict reads only the model section from it, the rest from preprocessing.json).
    config = Config.model_validate(
        {
            "seed": 0,
            "data": {
                "source": "digits",
                "path": str(root / "d.jsonl"),
                "target": "label",
                "cache_dir": str(root / "cache"),
                "max_length": 24,
            },
            "model": {"name": "transformer", "dim": 32, "depth": 1, "heads": 2, "dropout": 0.0, "max_length": 24},
        }
    )
    config.data.tokenizer.vocab_size = 200
    data = prepare_text_classification(config)
    train = data.split("train")
    torch.manual_seed(0)
    model = build_model("transformer", config.model.params(), (24,), data.num_outputs, vocab_size=data.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(3):
        order = np.random.default_rng([0, epoch]).permutation(len(train))
        for s in range(0, len(order), 32):
            batch = train.get_batch(order[s : s + 32], epoch)
            loss = token_cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    run = root / "run"
    run.mkdir()
    save_config(config, run / "config.yaml")
    (run / "preprocessing.json").write_text(json.dumps(data.preprocessing()))
    shutil.copy(data.tokenizer_path, run / "tokenizer.json")
    save_weights(model.eval(), run / "best.safetensors")
    return run, data, model, rows


def test_predict_gives_the_probabilities_of_the_training_ids(text_run, tmp_path) -> None:
    """Raw val texts through predict equal the model on the prepared val batch: same tokenisation as training."""
    run, data, model, rows = text_run
    val = data.split("val")
    # The val rows in prepared order: the split stores indices sorted, labels alongside.
    batch = val.get_batch(np.arange(len(val)))
    with torch.no_grad():
        expected = torch.softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), -1)
    texts = [r["text"] for r in rows]
    from taktstock.data.text.tokenizer import load_tokenizer

    tok = load_tokenizer(run / "tokenizer.json")
    by_ids = {tuple(tok.encode(t).ids): t for t in texts}
    val_texts = [by_ids[tuple(val[i]["input_ids"].tolist())] for i in range(len(val))]
    write_jsonl(tmp_path / "val.jsonl", [{"text": t} for t in val_texts])
    header, out = predict(run, tmp_path / "val.jsonl")
    assert header == ["prediction", "prob_food", "prob_music", "prob_sport"]
    probs = torch.tensor([r[1:] for r in out])
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    accuracy = np.mean([r[0] == data.class_names[int(y)] for r, y in zip(out, batch["labels"], strict=True)])
    assert accuracy > 0.6  # chance is 1/3; learning itself is tested in test_text_data


def test_predict_cli_reads_a_text_file_one_text_per_line(text_run, workdir) -> None:
    run, _, _, _ = text_run
    (workdir / "new.txt").write_text("the striker scored a goal for the team\n\nwe baked bread with garlic in the oven\n")
    proc = run_cli("predict", str(run), "new.txt", check=True)
    table = list(csv.reader(io.StringIO(proc.stdout)))
    assert table[0] == ["prediction", "prob_food", "prob_music", "prob_sport"] and len(table) == 3
    assert [r[0] for r in table[1:]] == ["sport", "food"]
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-5 for r in table[1:])
    (workdir / "bad.jsonl").write_text('{"body": "x"}\n')
    bad = run_cli("predict", str(run), "bad.jsonl")
    assert bad.returncode == 2 and "no field 'text'" in bad.stderr and "Traceback" not in bad.stderr
