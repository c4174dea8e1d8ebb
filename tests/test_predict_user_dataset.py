"""`predict` on a run trained on a user Dataset class replays the dataset's own `features(rows)` transform."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from conftest import run_cli

PLAIN = '''
import numpy as np
from torch.utils.data import Dataset
from sklearn.datasets import load_wine


class PlainWine(Dataset):
    """Transforms its rows in __init__ without a features(rows) hook: predict cannot replay that."""

    def __init__(self):
        bunch = load_wine()
        self.x, self.y = np.log1p(bunch.data).astype(np.float32), bunch.target

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]
'''


def test_predict_on_the_training_file_agrees_with_evaluate_and_a_dataset_without_the_hook_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "wine"
    run_cli("new", str(project), "--example", "tabular", check=True)
    run_cli("train", "config.yaml", "train.epochs=8", "logging.tensorboard=false", "logging.plots=false", cwd=project, check=True)
    (run,) = sorted((project / "experiments" / "runs").iterdir())

    # Correct predictions per class over every row, as evaluate counts them split by split.
    correct: Counter[str] = Counter()
    for split in ("train", "val", "test"):
        run_cli("evaluate", str(run), "--split", split, cwd=project, check=True)
        report = json.loads((run / "eval" / "report.json").read_text())
        correct.update({name: round(v["recall"] * v["support"]) for name, v in report.items()})

    out = run_cli("predict", str(run), "data/processed/wine.csv", cwd=project, check=True).stdout
    predicted = list(csv.DictReader(io.StringIO(out)))
    with (project / "data" / "processed" / "wine.csv").open(newline="") as f:
        truth = [r["cultivar"] for r in csv.DictReader(f)]
    assert len(predicted) == len(truth) == 178
    hits = Counter(t for t, p in zip(truth, predicted, strict=True) if p["prediction"] == t)
    assert hits == correct, (hits, correct)
    assert sum(hits.values()) > 0.8 * len(truth)  # not one class for every row

    (project / "data" / "plain.py").write_text(PLAIN)
    run_cli(
        "train",
        "config.yaml",
        "data.source=data.plain:PlainWine",
        "~data.kwargs",
        "train.epochs=1",
        "experiment.name=plain",
        "logging.tensorboard=false",
        "logging.plots=false",
        cwd=project,
        check=True,
    )
    (plain,) = sorted((project / "experiments" / "runs").glob("plain-*"))
    proc = run_cli("predict", str(plain), "data/processed/wine.csv", cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert "data.plain:PlainWine has no `features(rows)` method" in proc.stderr and "Traceback" not in proc.stderr
